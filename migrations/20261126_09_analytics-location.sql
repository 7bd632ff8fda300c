-- analytics_events gets the PostGIS point next to its location_data JSONB, as every
-- other table with a location has: events can then be asked about by place
-- (ST_DWithin) without parsing JSON. Filled for rows stored before this migration.
-- No spatial index: nothing in the server queries events by place yet, and an index
-- on every monthly partition would tax the ingestion path for nobody.
-- depends: 20261126_08_audit-no-truncate

ALTER TABLE analytics_events ADD COLUMN location GEOGRAPHY(Point, 4326);
UPDATE analytics_events
    SET location = ST_SetSRID(ST_MakePoint((location_data->>'lng')::float8, (location_data->>'lat')::float8), 4326)::geography
    WHERE location_data ? 'lat' AND location_data ? 'lng';
