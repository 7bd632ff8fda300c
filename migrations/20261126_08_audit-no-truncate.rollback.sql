DROP TRIGGER audit_log_no_truncate ON audit_log;
DROP FUNCTION securenow_audit_no_truncate();
