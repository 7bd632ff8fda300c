"""SecureNow server: async gRPC API over PostgreSQL, Redis and (optionally) Elasticsearch.

Layers: transport (gRPC servicers, interceptors) -> services (use cases, unit of work)
-> domain (rules, no I/O, no protobuf) and storage (SQL, Redis). `bootstrap` is the
single composition root.
"""
