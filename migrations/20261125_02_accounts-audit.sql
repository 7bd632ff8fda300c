-- Accounts, sessions, refresh tokens, idempotency records and the audit log.
-- depends: 20261125_01_extensions-enums

CREATE TABLE users (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    email VARCHAR(255) UNIQUE NOT NULL CHECK (email = lower(email)),
    phone VARCHAR(20) UNIQUE NOT NULL,
    first_name VARCHAR(100) NOT NULL,
    last_name VARCHAR(100) NOT NULL,
    role user_role NOT NULL DEFAULT 'user',
    status user_status NOT NULL DEFAULT 'active',
    safety_score INTEGER DEFAULT 85,
    location_data JSONB,
    emergency_contacts JSONB,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    last_active TIMESTAMP WITH TIME ZONE,
    verification_status verification_status DEFAULT 'pending',
    -- AES-GCM envelope {"v","kid","nonce","ct"}; never plaintext.
    kyc_data JSONB,
    -- Beyond the seed:
    password_hash TEXT NOT NULL,
    location GEOGRAPHY(Point, 4326),
    kyc_submitted_at TIMESTAMP WITH TIME ZONE,
    agency_id UUID
);
CREATE INDEX idx_users_location ON users USING GIN (location_data);
CREATE INDEX idx_users_created ON users (created_at DESC, id DESC);

-- A session is one sign-in; its refresh tokens rotate inside it. Revoking the
-- session (sign-out, reuse detected, suspension) invalidates every token of it.
CREATE TABLE auth_sessions (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    expires_at TIMESTAMP WITH TIME ZONE NOT NULL,
    revoked_at TIMESTAMP WITH TIME ZONE,
    revoke_reason TEXT
);
CREATE INDEX idx_auth_sessions_user_live ON auth_sessions (user_id) WHERE revoked_at IS NULL;

CREATE TABLE refresh_tokens (
    id UUID PRIMARY KEY,
    session_id UUID NOT NULL REFERENCES auth_sessions(id) ON DELETE CASCADE,
    token_hash BYTEA NOT NULL,
    issued_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    expires_at TIMESTAMP WITH TIME ZONE NOT NULL,
    used_at TIMESTAMP WITH TIME ZONE
);
CREATE INDEX idx_refresh_tokens_session ON refresh_tokens (session_id);

-- AIP-155 request ids: the first result of a create is returned for retries.
CREATE TABLE idempotency_keys (
    principal_id TEXT NOT NULL,
    operation TEXT NOT NULL,
    request_id UUID NOT NULL,
    request_hash BYTEA NOT NULL,
    resource_id UUID,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    PRIMARY KEY (principal_id, operation, request_id)
);
CREATE INDEX idx_idempotency_keys_created ON idempotency_keys (created_at);

-- Append-only audit log. Rows are written in the transaction of the change they
-- record; a sealer (securenow_audit_seal) later links them into a SHA-256 hash
-- chain in commit-visibility order, so writers never serialise on the chain head.
CREATE TABLE audit_log (
    id BIGSERIAL PRIMARY KEY,
    occurred_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT clock_timestamp(),
    actor_type TEXT NOT NULL,
    actor_id TEXT,
    actor_role TEXT,
    action TEXT NOT NULL,
    resource_type TEXT,
    resource_id TEXT,
    outcome TEXT NOT NULL,
    details JSONB NOT NULL DEFAULT '{}'::jsonb,
    chain_seq BIGINT UNIQUE,
    prev_hash BYTEA,
    entry_hash BYTEA
);
CREATE INDEX idx_audit_log_unsealed ON audit_log (id) WHERE chain_seq IS NULL;
CREATE INDEX idx_audit_log_resource ON audit_log (resource_type, resource_id);
CREATE INDEX idx_audit_log_actor ON audit_log (actor_id, occurred_at);

CREATE FUNCTION securenow_audit_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'audit_log is append-only' USING ERRCODE = 'insufficient_privilege';
    END IF;
    -- The only update allowed is sealing an unsealed row.
    IF OLD.chain_seq IS NOT NULL
       OR (NEW.id, NEW.occurred_at, NEW.actor_type, NEW.actor_id, NEW.actor_role, NEW.action,
           NEW.resource_type, NEW.resource_id, NEW.outcome, NEW.details)
          IS DISTINCT FROM
          (OLD.id, OLD.occurred_at, OLD.actor_type, OLD.actor_id, OLD.actor_role, OLD.action,
           OLD.resource_type, OLD.resource_id, OLD.outcome, OLD.details) THEN
        RAISE EXCEPTION 'audit_log is append-only' USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION securenow_audit_guard();

CREATE FUNCTION securenow_audit_entry_digest(prev BYTEA, a audit_log) RETURNS BYTEA
LANGUAGE sql IMMUTABLE AS $$
    SELECT sha256(coalesce(prev, '\x'::bytea) || convert_to(concat_ws(E'\x1f',
        a.id::text, to_char(a.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US'),
        a.actor_type, a.actor_id, a.actor_role, a.action, a.resource_type, a.resource_id,
        a.outcome, a.details::text), 'UTF8'))
$$;

-- Seals up to batch_size unsealed rows onto the chain; returns how many.
-- Safe to call from several replicas: they serialise on an advisory lock.
CREATE FUNCTION securenow_audit_seal(batch_size INTEGER DEFAULT 1000) RETURNS INTEGER
LANGUAGE plpgsql AS $$
DECLARE
    head_seq BIGINT;
    head_hash BYTEA;
    r audit_log;
    n INTEGER := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('securenow_audit_seal'));
    SELECT chain_seq, entry_hash INTO head_seq, head_hash
      FROM audit_log WHERE chain_seq IS NOT NULL ORDER BY chain_seq DESC LIMIT 1;
    head_seq := coalesce(head_seq, 0);
    FOR r IN SELECT * FROM audit_log WHERE chain_seq IS NULL ORDER BY id LIMIT batch_size LOOP
        head_seq := head_seq + 1;
        UPDATE audit_log
           SET chain_seq = head_seq, prev_hash = head_hash,
               entry_hash = securenow_audit_entry_digest(head_hash, r)
         WHERE id = r.id
         RETURNING entry_hash INTO head_hash;
        n := n + 1;
    END LOOP;
    RETURN n;
END $$;

-- Recomputes the chain; returns the chain_seq of the first entry that does not
-- match (tampered), or NULL when the whole sealed chain is intact.
CREATE FUNCTION securenow_audit_verify() RETURNS BIGINT LANGUAGE plpgsql AS $$
DECLARE
    r audit_log;
    expected BYTEA := NULL;
    want_seq BIGINT := 1;
BEGIN
    FOR r IN SELECT * FROM audit_log WHERE chain_seq IS NOT NULL ORDER BY chain_seq LOOP
        IF r.chain_seq <> want_seq
           OR r.prev_hash IS DISTINCT FROM expected
           OR r.entry_hash <> securenow_audit_entry_digest(expected, r) THEN
            RETURN r.chain_seq;
        END IF;
        expected := r.entry_hash;
        want_seq := want_seq + 1;
    END LOOP;
    RETURN NULL;
END $$;
