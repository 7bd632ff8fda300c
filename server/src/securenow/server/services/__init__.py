"""Use cases. Each public method owns its transaction (unit of work), checks the
caller's right to the object, and records an audit entry for every mutation."""
