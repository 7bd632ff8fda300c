-- Providers, bookings (partitioned by year) and the no-double-booking guarantee.
-- depends: 20261125_02_accounts-audit

CREATE TABLE providers (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id UUID REFERENCES users(id) UNIQUE,
    company_name VARCHAR(255) NOT NULL,
    business_type provider_type NOT NULL,
    license_number VARCHAR(100),
    insurance_info JSONB,
    -- {"geojson": <Polygon/MultiPolygon>}; the geometry is in service_area.
    service_areas JSONB,
    rating DECIMAL(3,2) DEFAULT 0.0,
    total_reviews INTEGER DEFAULT 0,
    verification_status verification_status DEFAULT 'pending',
    availability_schedule JSONB,
    -- {"rates": {"security_guard": {"currency_code","units","nanos"}}, "minimum_hours": n}
    pricing_info JSONB,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    -- Beyond the seed. The seed indexes providers (business_type, location_data)
    -- without defining the column: it is the base location, as for the other tables.
    location_data JSONB,
    location GEOGRAPHY(Point, 4326),
    service_area GEOGRAPHY(MultiPolygon, 4326),
    tags TEXT[] NOT NULL DEFAULT '{}',
    description TEXT NOT NULL DEFAULT ''
);
CREATE INDEX idx_providers_type_location ON providers (business_type, location_data);
CREATE INDEX idx_providers_location ON providers USING GIST (location);
CREATE INDEX idx_providers_verified_rating ON providers (verification_status, rating DESC, id);

CREATE TABLE bookings (
    id UUID NOT NULL DEFAULT gen_random_uuid(),
    user_id UUID REFERENCES users(id) NOT NULL,
    provider_id UUID REFERENCES providers(id) NOT NULL,
    service_type service_type NOT NULL,
    booking_date TIMESTAMP WITH TIME ZONE NOT NULL,
    duration INTEGER NOT NULL CHECK (duration BETWEEN 1 AND 24), -- in hours
    location_data JSONB NOT NULL,
    special_instructions TEXT,
    status booking_status NOT NULL DEFAULT 'pending',
    total_price DECIMAL(10,2) NOT NULL CHECK (total_price >= 0),
    payment_status payment_status DEFAULT 'pending',
    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    -- Beyond the seed:
    currency_code CHAR(3) NOT NULL,
    location GEOGRAPHY(Point, 4326),
    rating SMALLINT CHECK (rating BETWEEN 1 AND 5),
    review TEXT,
    cancel_reason TEXT,
    -- A partitioned table's primary key must contain the partition key.
    PRIMARY KEY (id, booking_date)
) PARTITION BY RANGE (booking_date);
CREATE INDEX idx_bookings_status ON bookings (status, booking_date);
CREATE INDEX idx_bookings_user ON bookings (user_id, booking_date, id);
CREATE INDEX idx_bookings_provider ON bookings (provider_id, booking_date, id);

-- PostgreSQL 15 cannot put an exclusion constraint on a partitioned table, and one
-- per partition would miss overlaps across a year boundary. So every live booking
-- holds its time range here, under one exclusion constraint, maintained by trigger
-- in the booking's own transaction: an overlapping insert fails with 23P01.
CREATE TABLE provider_reservations (
    booking_id UUID PRIMARY KEY,
    provider_id UUID NOT NULL REFERENCES providers(id),
    during TSTZRANGE NOT NULL,
    CONSTRAINT provider_reservations_no_overlap
        EXCLUDE USING gist (provider_id WITH =, during WITH &&)
);

CREATE FUNCTION securenow_booking_reservation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF (OLD.status <> 'cancelled') = (NEW.status <> 'cancelled')
           AND (OLD.provider_id, OLD.booking_date, OLD.duration)
               = (NEW.provider_id, NEW.booking_date, NEW.duration) THEN
            RETURN NULL;
        END IF;
        DELETE FROM provider_reservations WHERE booking_id = OLD.id;
    END IF;
    IF NEW.status <> 'cancelled' THEN
        INSERT INTO provider_reservations (booking_id, provider_id, during)
        VALUES (NEW.id, NEW.provider_id,
                tstzrange(NEW.booking_date, NEW.booking_date + make_interval(hours => NEW.duration)));
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER bookings_reservation_insert AFTER INSERT ON bookings
    FOR EACH ROW EXECUTE FUNCTION securenow_booking_reservation();
CREATE TRIGGER bookings_reservation_update
    AFTER UPDATE OF status, booking_date, duration, provider_id ON bookings
    FOR EACH ROW EXECUTE FUNCTION securenow_booking_reservation();
