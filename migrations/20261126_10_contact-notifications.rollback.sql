DROP INDEX idx_sos_alerts_contacts_pending;
ALTER TABLE sos_alerts DROP COLUMN contacts_notify_lease_until;
