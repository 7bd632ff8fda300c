-- Row-level security as a second wall for agency data (ARCHITECTURE.md): what a police
-- department or security agency reads (alerts, incidents, location trails) is read as
-- the role securenow_agency_reader, which sees only rows of the agency named in the
-- transaction setting securenow.agency_id (and alerts the caller raised themselves,
-- securenow.user_id). The services check the same rules first; this catches a query
-- that forgets to. The server's own role owns the tables, so RLS does not restrict it.
-- depends: 20261125_05_analytics

-- Roles are per cluster: another database may have it already, or a DBA may have
-- created it (and granted it to the server's role) when the server's role may not
-- create roles.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'securenow_agency_reader') THEN
        BEGIN
            CREATE ROLE securenow_agency_reader NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;  -- created meanwhile by a migration of another database
        END;
    END IF;
    -- The server's role must be a member to SET ROLE to it.
    IF NOT pg_has_role(current_user, 'securenow_agency_reader', 'MEMBER') THEN
        GRANT securenow_agency_reader TO CURRENT_USER;
    END IF;
END
$$;

GRANT USAGE ON SCHEMA public TO securenow_agency_reader;
GRANT SELECT ON sos_alerts, police_incidents, sos_alert_locations TO securenow_agency_reader;
-- Reading someone else's emergency is audited in the same transaction.
GRANT INSERT ON audit_log TO securenow_agency_reader;
GRANT USAGE ON SEQUENCE audit_log_id_seq TO securenow_agency_reader;

CREATE FUNCTION securenow_reader_setting(name TEXT) RETURNS UUID LANGUAGE sql STABLE AS $$
    SELECT nullif(current_setting(name, true), '')::uuid
$$;

ALTER TABLE sos_alerts ENABLE ROW LEVEL SECURITY;
CREATE POLICY agency_reads_its_alerts ON sos_alerts FOR SELECT TO securenow_agency_reader
    USING (assigned_agency = securenow_reader_setting('securenow.agency_id')
           OR user_id = securenow_reader_setting('securenow.user_id'));

ALTER TABLE police_incidents ENABLE ROW LEVEL SECURITY;
CREATE POLICY agency_reads_its_incidents ON police_incidents FOR SELECT TO securenow_agency_reader
    USING (police_department_id = securenow_reader_setting('securenow.agency_id'));

ALTER TABLE sos_alert_locations ENABLE ROW LEVEL SECURITY;
CREATE POLICY agency_reads_its_trails ON sos_alert_locations FOR SELECT TO securenow_agency_reader
    USING (EXISTS (SELECT 1 FROM sos_alerts a WHERE a.id = alert_id));  -- the alert's policy applies
