-- Search over PostgreSQL (the embedded default backend of SearchService) and one stored
-- safety score per map cell.
-- depends: 20261125_06_agency-row-security

-- A provider's full-text document: name weighs most, then tags, then the description.
-- IMMUTABLE (array_to_string is only STABLE in general, but text[] output does not
-- depend on settings), so it can define a stored column: searches then match and rank
-- without re-parsing the text of every candidate row.
CREATE FUNCTION securenow_provider_document(company_name TEXT, tags TEXT[], description TEXT)
RETURNS tsvector LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT setweight(to_tsvector('english', coalesce(company_name, '')), 'A')
        || setweight(to_tsvector('english', array_to_string(coalesce(tags, '{}'), ' ')), 'B')
        || setweight(to_tsvector('english', coalesce(description, '')), 'C')
$$;
ALTER TABLE providers ADD COLUMN search_document tsvector
    GENERATED ALWAYS AS (securenow_provider_document(company_name, tags, description)) STORED;
CREATE INDEX idx_providers_search ON providers USING GIN (search_document);
CREATE INDEX idx_providers_tags ON providers USING GIN (tags);
-- "Near" matches a provider based within the radius or serving the point.
CREATE INDEX idx_providers_service_area ON providers USING GIST (service_area);

-- An incident's document spans the alert (what the person wrote) and the incident
-- (what the officers wrote on resolving it).
CREATE FUNCTION securenow_incident_document(description TEXT, resolution_notes TEXT)
RETURNS tsvector LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT setweight(to_tsvector('english', coalesce(description, '')), 'A')
        || setweight(to_tsvector('english', coalesce(resolution_notes, '')), 'B')
$$;

-- Safety scores are computed for cells of a fixed grid and kept one row per cell (the
-- latest computation), so a busy area does not pile up duplicate scores.
ALTER TABLE safety_scores ADD COLUMN cell TEXT;
CREATE UNIQUE INDEX idx_safety_scores_cell ON safety_scores (cell);
CREATE INDEX idx_safety_scores_valid ON safety_scores (valid_until);

-- Elasticsearch, when configured, is fed from these: rows changed after a cursor, in
-- (updated_at, id) order, and how far each feed is known to be complete.
CREATE INDEX idx_providers_updated ON providers (updated_at, id);
CREATE INDEX idx_police_incidents_updated ON police_incidents (updated_at, id);
CREATE INDEX idx_sos_alerts_updated ON sos_alerts (updated_at, id);
CREATE TABLE search_index_state (
    feed TEXT PRIMARY KEY,
    settled_at TIMESTAMP WITH TIME ZONE NOT NULL,
    settled_id UUID NOT NULL
);
