-- Extensions and the seed's enum types.
-- postgis: geography points next to location_data JSONB, jurisdiction polygons.
-- btree_gist: the booking exclusion constraint mixes uuid equality with range overlap.
CREATE EXTENSION IF NOT EXISTS postgis;
CREATE EXTENSION IF NOT EXISTS btree_gist;

CREATE TYPE user_role AS ENUM ('user', 'provider', 'admin', 'police', 'security_agency');
CREATE TYPE user_status AS ENUM ('active', 'suspended', 'deleted');
CREATE TYPE verification_status AS ENUM ('pending', 'verified', 'rejected');
CREATE TYPE provider_type AS ENUM ('security_guard', 'drone_patrol', 'security_agency', 'police_department');
CREATE TYPE sos_status AS ENUM ('active', 'responding', 'resolved', 'cancelled');
CREATE TYPE alert_priority AS ENUM ('low', 'medium', 'high', 'critical');
CREATE TYPE service_type AS ENUM ('security_guard', 'drone_patrol', 'event_security');
CREATE TYPE booking_status AS ENUM ('pending', 'confirmed', 'in_progress', 'completed', 'cancelled');
CREATE TYPE payment_status AS ENUM ('pending', 'paid', 'refunded', 'failed');
CREATE TYPE incident_type AS ENUM ('assault', 'theft', 'medical', 'suspicious_activity', 'other');
CREATE TYPE incident_priority AS ENUM ('low', 'medium', 'high', 'critical');
CREATE TYPE incident_status AS ENUM ('reported', 'dispatched', 'on_scene', 'resolved');
CREATE TYPE department_status AS ENUM ('active', 'inactive', 'suspended');
-- Not in the seed: police_departments holds both police departments and security
-- agencies (see docs/decisions.md).
CREATE TYPE agency_type AS ENUM ('police_department', 'security_agency');
