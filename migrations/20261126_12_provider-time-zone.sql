-- The IANA time zone a provider's availability schedule is written in. With it (and a
-- schedule), bookings must fall inside the provider's windows; without it the schedule
-- is only shown to customers.
-- depends: 20261126_11_trail-time-order
ALTER TABLE providers ADD COLUMN time_zone TEXT;
