"""Domain: entities, rules and errors. No I/O, no protobuf, no gRPC."""
