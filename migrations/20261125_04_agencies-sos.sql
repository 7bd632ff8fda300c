-- Police departments / security agencies, API keys, SOS alerts, incidents, the
-- location trail and the transactional outbox.
-- depends: 20261125_03_providers-bookings

-- The seed points sos_alerts.assigned_agency and police_incidents.police_department_id
-- at providers(id); they reference this table instead (docs/decisions.md).
CREATE TABLE police_departments (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    department_name VARCHAR(255) NOT NULL,
    jurisdiction JSONB,            -- the GeoJSON as registered
    contact_info JSONB,
    api_credentials JSONB,         -- AES-GCM envelope: webhook signing secret
    webhook_url VARCHAR(500),
    status department_status DEFAULT 'active',
    -- Beyond the seed:
    agency_type agency_type NOT NULL DEFAULT 'police_department',
    jurisdiction_geom GEOMETRY(MultiPolygon, 4326) NOT NULL CHECK (ST_IsValid(jurisdiction_geom)),
    provider_id UUID REFERENCES providers(id),
    ack_timeout_seconds INTEGER NOT NULL DEFAULT 30 CHECK (ack_timeout_seconds > 0),
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW()
);
CREATE INDEX idx_police_departments_jurisdiction ON police_departments USING GIST (jurisdiction_geom);
CREATE INDEX idx_police_departments_created ON police_departments (created_at DESC, id DESC);

ALTER TABLE users ADD CONSTRAINT users_agency_id_fkey
    FOREIGN KEY (agency_id) REFERENCES police_departments(id);

-- API keys: the secret is shown once; only its HMAC-SHA256 is stored.
CREATE TABLE agency_api_keys (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    department_id UUID NOT NULL REFERENCES police_departments(id) ON DELETE CASCADE,
    secret_hash BYTEA NOT NULL,
    display_prefix TEXT NOT NULL,
    label TEXT NOT NULL DEFAULT '',
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    revoked_at TIMESTAMP WITH TIME ZONE,
    last_used_at TIMESTAMP WITH TIME ZONE
);
CREATE INDEX idx_agency_api_keys_department ON agency_api_keys (department_id, created_at DESC);

CREATE TABLE sos_alerts (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id UUID REFERENCES users(id) NOT NULL,
    location_data JSONB NOT NULL,  -- latest fix; {} until the phone has one
    description TEXT,
    status sos_status NOT NULL DEFAULT 'active',
    priority alert_priority NOT NULL DEFAULT 'high',
    assigned_agency UUID REFERENCES police_departments(id),
    response_time INTEGER, -- in seconds
    police_notified BOOLEAN DEFAULT FALSE,
    emergency_contacts_notified JSONB,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    resolved_at TIMESTAMP WITH TIME ZONE,
    metadata JSONB,
    -- Beyond the seed:
    incident_type incident_type NOT NULL DEFAULT 'other',
    location GEOGRAPHY(Point, 4326),
    escalation_level INTEGER NOT NULL DEFAULT 0,
    outside_jurisdiction BOOLEAN NOT NULL DEFAULT FALSE,
    -- Acknowledgement deadline: when set and passed, any replica's sweeper escalates.
    escalate_at TIMESTAMP WITH TIME ZONE,
    -- Agencies that declined or let the deadline pass; routing skips them.
    passed_agencies UUID[] NOT NULL DEFAULT '{}',
    cancel_reason TEXT,
    updated_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW()
);
CREATE INDEX idx_sos_alerts_created_at ON sos_alerts (created_at);
CREATE INDEX idx_sos_alerts_user ON sos_alerts (user_id, created_at DESC, id DESC);
CREATE INDEX idx_sos_alerts_agency ON sos_alerts (assigned_agency, created_at DESC, id DESC);
CREATE INDEX idx_sos_alerts_escalate ON sos_alerts (escalate_at) WHERE escalate_at IS NOT NULL;
CREATE INDEX idx_sos_alerts_location ON sos_alerts USING GIST (location);

CREATE TABLE police_incidents (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    sos_alert_id UUID REFERENCES sos_alerts(id),
    police_department_id UUID REFERENCES police_departments(id),
    incident_type incident_type NOT NULL,
    priority incident_priority NOT NULL DEFAULT 'high',
    status incident_status NOT NULL DEFAULT 'reported',
    assigned_unit VARCHAR(100),
    estimated_arrival INTEGER, -- in minutes
    actual_arrival TIMESTAMP WITH TIME ZONE,
    resolution_notes TEXT,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW()
);
-- One incident per alert: rerouting hands it to the next agency.
CREATE UNIQUE INDEX idx_police_incidents_alert ON police_incidents (sos_alert_id);
CREATE INDEX idx_police_incidents_department ON police_incidents (police_department_id, created_at DESC, id DESC);

-- The trail of an alert (ShareLocation): device time, accuracy, motion.
CREATE TABLE sos_alert_locations (
    alert_id UUID NOT NULL REFERENCES sos_alerts(id) ON DELETE CASCADE,
    id BIGSERIAL,
    recorded_at TIMESTAMP WITH TIME ZONE NOT NULL,
    received_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    latitude DOUBLE PRECISION NOT NULL CHECK (latitude BETWEEN -90 AND 90),
    longitude DOUBLE PRECISION NOT NULL CHECK (longitude BETWEEN -180 AND 180),
    -- Derived, so the ingest path can COPY plain numbers.
    location GEOGRAPHY(Point, 4326) GENERATED ALWAYS AS
        (ST_SetSRID(ST_MakePoint(longitude, latitude), 4326)::geography) STORED,
    accuracy_m REAL,
    heading_deg REAL,
    speed_mps REAL,
    address TEXT,
    PRIMARY KEY (alert_id, id)
);

-- Transactional outbox: every state change other parties must hear about is written
-- here in the same transaction. The relay publishes rows to Redis (dispatch streams
-- with ids from dept_seq, Pub/Sub channels) and marks them published.
CREATE TABLE outbox (
    id BIGSERIAL PRIMARY KEY,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    topic TEXT NOT NULL,
    event_type TEXT NOT NULL,
    aggregate_id UUID,
    department_id UUID REFERENCES police_departments(id),
    payload JSONB NOT NULL,
    -- Per-department sequence, assigned by the relay in publish order: the event id.
    dept_seq BIGINT,
    published_at TIMESTAMP WITH TIME ZONE,
    acked_at TIMESTAMP WITH TIME ZONE
);
CREATE INDEX idx_outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
CREATE UNIQUE INDEX idx_outbox_dept_seq ON outbox (department_id, dept_seq) WHERE dept_seq IS NOT NULL;
CREATE INDEX idx_outbox_unacked ON outbox (department_id, dept_seq)
    WHERE dept_seq IS NOT NULL AND acked_at IS NULL;

-- Wakes the relay (LISTEN securenow_outbox) as soon as events commit.
CREATE FUNCTION securenow_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('securenow_outbox', '');
    RETURN NULL;
END $$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION securenow_outbox_notify();

-- Last sequence number handed out per department (relay only).
CREATE TABLE dispatch_sequences (
    department_id UUID PRIMARY KEY REFERENCES police_departments(id) ON DELETE CASCADE,
    last_seq BIGINT NOT NULL DEFAULT 0
);

-- Signed webhooks to departments, one row per (outbox event, department), created by
-- the relay when it publishes the event; any replica sends them (SKIP LOCKED),
-- retrying with backoff until delivered or dead-lettered.
CREATE TABLE webhook_deliveries (
    id BIGSERIAL PRIMARY KEY,
    outbox_id BIGINT NOT NULL,
    department_id UUID NOT NULL REFERENCES police_departments(id) ON DELETE CASCADE,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    body JSONB NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    last_error TEXT,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    delivered_at TIMESTAMP WITH TIME ZONE,
    UNIQUE (outbox_id, department_id)
);
CREATE INDEX idx_webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
