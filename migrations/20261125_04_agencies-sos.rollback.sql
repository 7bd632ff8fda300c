DROP TABLE dispatch_sequences;
DROP TABLE outbox;
DROP FUNCTION securenow_outbox_notify();
DROP TABLE sos_alert_locations;
DROP TABLE police_incidents;
DROP TABLE sos_alerts;
DROP TABLE agency_api_keys;
ALTER TABLE users DROP CONSTRAINT users_agency_id_fkey;
DROP TABLE police_departments;
