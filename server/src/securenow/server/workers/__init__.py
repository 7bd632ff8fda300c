"""Background work every replica runs: the outbox relay (one leader at a time) and
periodic maintenance (partitions, audit sealing, expiry)."""
