DROP FUNCTION securenow_audit_verify();
DROP FUNCTION securenow_audit_seal(INTEGER);
DROP FUNCTION securenow_audit_entry_digest(BYTEA, audit_log);
DROP TABLE audit_log;
DROP FUNCTION securenow_audit_guard();
DROP TABLE idempotency_keys;
DROP TABLE refresh_tokens;
DROP TABLE auth_sessions;
DROP TABLE users;
