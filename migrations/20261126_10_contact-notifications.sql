-- Emergency contacts told about an SOS (workers/contact_notifier.py). The seed's
-- sos_alerts.emergency_contacts_notified stays NULL until the contacts are handled; the
-- notifier finds such alerts through a partial index (it is small: only alerts of the
-- last moments), and leases each one for a while (contacts_notify_lease_until) so two
-- replicas never text the same contacts at once.
-- depends: 20261126_09_analytics-location

ALTER TABLE sos_alerts ADD COLUMN contacts_notify_lease_until TIMESTAMP WITH TIME ZONE;
CREATE INDEX idx_sos_alerts_contacts_pending ON sos_alerts (created_at) WHERE emergency_contacts_notified IS NULL;

-- Alerts raised before this release, more than the notification window (an hour) ago,
-- are recorded here once as expired for the contacts the person has now, as the
-- notifier would record them: it is not left a backlog of history to audit one by one,
-- and the index above starts small.
UPDATE sos_alerts a
    SET emergency_contacts_notified = COALESCE(
        (SELECT jsonb_agg(jsonb_build_object('name', COALESCE(c->>'name', ''), 'phone', COALESCE(c->>'phone', ''),
                                             'status', 'expired', 'attempts', 0, 'at', now()))
           FROM users u,
                jsonb_array_elements(CASE WHEN jsonb_typeof(u.emergency_contacts) = 'array'
                                          THEN u.emergency_contacts ELSE '[]'::jsonb END) c
          WHERE u.id = a.user_id),
        '[]'::jsonb)
    WHERE a.emergency_contacts_notified IS NULL AND a.created_at < now() - interval '1 hour';
