-- Emergency contacts told about an SOS (workers/contact_notifier.py). The seed's
-- sos_alerts.emergency_contacts_notified stays NULL until the contacts are handled; the
-- notifier finds such alerts through a partial index (it is small: only alerts of the
-- last moments), and leases each one for a while (contacts_notify_lease_until) so two
-- replicas never text the same contacts at once.
-- depends: 20261126_09_analytics-location

ALTER TABLE sos_alerts ADD COLUMN contacts_notify_lease_until TIMESTAMP WITH TIME ZONE;
CREATE INDEX idx_sos_alerts_contacts_pending ON sos_alerts (created_at) WHERE emergency_contacts_notified IS NULL;
