-- An alert's trail is read in the order the fixes were taken on the phone (a fix the
-- phone buffered while offline arrives late but belongs where its time puts it), paged
-- by the (recorded_at, id) keyset.
-- depends: 20261126_10_contact-notifications
CREATE INDEX idx_sos_alert_locations_time ON sos_alert_locations (alert_id, recorded_at, id);
