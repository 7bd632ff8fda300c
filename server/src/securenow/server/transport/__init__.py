"""gRPC transport: servicers (proto <-> domain only), the call interceptor
(authentication, authorization, errors, metrics, logs) and the server itself."""
