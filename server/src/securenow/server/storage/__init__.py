"""Storage adapters: PostgreSQL repositories (all SQL lives here) and Redis live state."""
