"""gRPC servicers: a few lines each, mapping proto to one service call and back."""
