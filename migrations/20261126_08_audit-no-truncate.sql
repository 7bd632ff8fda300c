-- The audit log is append-only (migration 02 refuses UPDATE and DELETE of rows); TRUNCATE
-- bypasses row triggers, and an emptied log would still verify as an intact (empty)
-- chain. Refuse it too, unless a session sets securenow.allow_audit_truncate = 'on'
-- (how the test suite resets its throwaway database; the setting is never set by the server).
-- depends: 20261125_07_search-safety

CREATE FUNCTION securenow_audit_no_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('securenow.allow_audit_truncate', true) = 'on' THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only' USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION securenow_audit_no_truncate();
