-- Analytics events (partitioned by month), safety scores, and partition maintenance.
-- depends: 20261125_04_agencies-sos

CREATE TABLE analytics_events (
    id UUID NOT NULL DEFAULT gen_random_uuid(),
    user_id UUID REFERENCES users(id),
    event_type VARCHAR(100) NOT NULL,
    event_data JSONB NOT NULL,
    location_data JSONB,
    timestamp TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    session_id VARCHAR(255),
    device_info JSONB,
    PRIMARY KEY (id, timestamp)
) PARTITION BY RANGE (timestamp);
CREATE INDEX idx_analytics_events_type ON analytics_events (event_type, timestamp);
CREATE INDEX idx_analytics_events_user ON analytics_events (user_id, timestamp);

CREATE TABLE safety_scores (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    location_data JSONB NOT NULL,
    score INTEGER NOT NULL CHECK (score BETWEEN 0 AND 100),
    risk_factors JSONB,
    recommendations JSONB,
    calculated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    valid_until TIMESTAMP WITH TIME ZONE,
    -- Beyond the seed:
    location GEOGRAPHY(Point, 4326) NOT NULL,
    radius_m REAL NOT NULL DEFAULT 500
);
CREATE INDEX idx_safety_scores_location ON safety_scores USING GIST (location);

-- Creates the partitions that should exist at p_now: bookings by year from 2024 to
-- two years ahead, analytics_events by month from 2024-01 to three months ahead.
-- Idempotent and safe to run from several replicas at once; returns how many it
-- created. Run by migrations, `securenow maintain` and the server once a day.
CREATE FUNCTION securenow_ensure_partitions(p_now TIMESTAMP WITH TIME ZONE DEFAULT NOW())
RETURNS INTEGER LANGUAGE plpgsql AS $$
DECLARE
    created INTEGER := 0;
    y INTEGER;
    m DATE;
    last_month DATE := (date_trunc('month', p_now AT TIME ZONE 'UTC') + INTERVAL '3 months')::date;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('securenow_ensure_partitions'));
    FOR y IN 2024 .. extract(year FROM p_now AT TIME ZONE 'UTC')::INTEGER + 2 LOOP
        IF to_regclass(format('bookings_%s', y)) IS NULL THEN
            EXECUTE format('CREATE TABLE %I PARTITION OF bookings FOR VALUES FROM (%L) TO (%L)',
                           format('bookings_%s', y),
                           make_timestamptz(y, 1, 1, 0, 0, 0, 'UTC'),
                           make_timestamptz(y + 1, 1, 1, 0, 0, 0, 'UTC'));
            created := created + 1;
        END IF;
    END LOOP;
    m := DATE '2024-01-01';
    WHILE m <= last_month LOOP
        IF to_regclass(format('analytics_events_%s', to_char(m, 'YYYY_MM'))) IS NULL THEN
            EXECUTE format('CREATE TABLE %I PARTITION OF analytics_events FOR VALUES FROM (%L) TO (%L)',
                           format('analytics_events_%s', to_char(m, 'YYYY_MM')),
                           m::timestamp AT TIME ZONE 'UTC',
                           (m + INTERVAL '1 month')::timestamp AT TIME ZONE 'UTC');
            created := created + 1;
        END IF;
        m := (m + INTERVAL '1 month')::date;
    END LOOP;
    RETURN created;
END $$;

DO $$ BEGIN PERFORM securenow_ensure_partitions(); END $$;
