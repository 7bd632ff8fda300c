-- The role stays: it is per cluster and other databases may use it.
DROP POLICY agency_reads_its_trails ON sos_alert_locations;
ALTER TABLE sos_alert_locations DISABLE ROW LEVEL SECURITY;
DROP POLICY agency_reads_its_incidents ON police_incidents;
ALTER TABLE police_incidents DISABLE ROW LEVEL SECURITY;
DROP POLICY agency_reads_its_alerts ON sos_alerts;
ALTER TABLE sos_alerts DISABLE ROW LEVEL SECURITY;
DROP FUNCTION securenow_reader_setting(TEXT);
REVOKE ALL ON sos_alerts, police_incidents, sos_alert_locations, audit_log FROM securenow_agency_reader;
REVOKE ALL ON SEQUENCE audit_log_id_seq FROM securenow_agency_reader;
REVOKE ALL ON SCHEMA public FROM securenow_agency_reader;
