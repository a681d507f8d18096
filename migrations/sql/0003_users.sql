-- Users and drivers: plain tables owned by the edge (`api`), not projections. They are
-- written directly by the HTTP handlers (login, driver registration, the operator's
-- `nebengjek user create-analyst`) and are the source of truth for who may log in and
-- with which role. Analysts may query them directly.

-- One row per person who ever logged in (or was created by an operator).
CREATE TABLE users (
    user_id     uuid        PRIMARY KEY,               -- UUID v7, made at first login
    msisdn      text        NOT NULL UNIQUE,           -- normalised Telkomsel number, '62' + national part
    role        text        NOT NULL
        CHECK (role IN ('passenger', 'driver', 'analyst')),  -- the role put in the user's tokens
    fullname    text,                                  -- optional display name
    created_at  timestamptz NOT NULL                   -- when the row was made (UTC)
);

-- One row per registered driver; a user becomes a driver at most once.
CREATE TABLE drivers (
    user_id        uuid        PRIMARY KEY REFERENCES users (user_id),
    vehicle_type   text        NOT NULL
        CHECK (vehicle_type IN ('motorcycle', 'car', 'van')),  -- stored lower-case
    vehicle_plate  text        NOT NULL UNIQUE,        -- normalised plate ('B 1234 XYZ'): unique across drivers
    registered_at  timestamptz NOT NULL                -- when the user became a driver (UTC)
);
