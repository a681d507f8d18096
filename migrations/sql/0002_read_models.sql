-- Read models: projections of the event store that analysts query directly.
-- Disposable: every row here can be rebuilt from position 0 of `events`
-- (`projections::runtime::rebuild`). Each projector's position is its row in
-- `checkpoints`, written in the same transaction as its rows (SPEC.md §5, guarantee 4).
-- Every column is documented in docs/read-models.md. Money is whole rupiah (bigint),
-- distances are kilometres to the metre (numeric(10,3)), times are UTC and come from
-- the events (never from the projector's clock), so a rebuild reproduces them exactly.

-- One row per ride (projector `read_models.rides`).
CREATE TABLE rides (
    ride_id            uuid          PRIMARY KEY,
    match_id           uuid          NOT NULL,
    driver_id          uuid          NOT NULL,
    passenger_id       uuid          NOT NULL,
    status             text          NOT NULL
        CHECK (status IN ('PENDING', 'IN_PROGRESS', 'ARRIVED', 'COMPLETED', 'CANCELLED')),
    pickup_lat         double precision NOT NULL,
    pickup_lon         double precision NOT NULL,
    destination_lat    double precision NOT NULL,
    destination_lon    double precision NOT NULL,
    distance_km        numeric(10,3),                 -- billed so far; 0 at start, final at arrival
    fare               bigint,                        -- clamped fare, null until arrival
    adjusted_fare      bigint,                        -- what the passenger pays, null until arrival
    admin_fee          bigint,                        -- platform share, null until arrival
    driver_payout      bigint,                        -- driver share, null until arrival
    adjustment_factor  numeric(5,4),                  -- driver's factor in (0, 1], null until arrival
    created_at         timestamptz   NOT NULL,
    started_at         timestamptz,
    arrived_at         timestamptz,
    completed_at       timestamptz,
    cancelled_at       timestamptz,
    cancelled_by       text          CHECK (cancelled_by IN ('driver', 'passenger')),
    cancel_reason      text,
    last_sequence      bigint        NOT NULL,        -- sequence of the last ride event applied
    last_hash          bytea         NOT NULL,        -- its hash: the chain head as projected
    updated_position   bigint        NOT NULL         -- its global position
);
CREATE INDEX rides_driver_created ON rides (driver_id, created_at);
CREATE INDEX rides_passenger_created ON rides (passenger_id, created_at);
CREATE INDEX rides_status ON rides (status);

-- One row per billing-ledger entry; a ride's entries sum to its adjusted fare.
CREATE TABLE billing_ledger (
    entry_id      uuid          PRIMARY KEY,          -- derived from ride, kind, ordinal
    ride_id       uuid          NOT NULL,
    kind          text          NOT NULL
        CHECK (kind IN ('trip_segment', 'minimum_fare', 'maximum_fare', 'driver_discount')),
    distance_km   numeric(10,3),                      -- the segment's length; null for other kinds
    cost          bigint        NOT NULL,             -- signed rupiah added to the price
    position      bigint        NOT NULL,             -- the event that booked it
    recorded_at   timestamptz   NOT NULL              -- when that event was recorded
);
CREATE INDEX billing_ledger_ride ON billing_ledger (ride_id);
CREATE INDEX billing_ledger_recorded ON billing_ledger (recorded_at);

-- One payment per ride, created PENDING at arrival.
CREATE TABLE payments (
    payment_id     uuid          PRIMARY KEY,
    ride_id        uuid          NOT NULL UNIQUE,
    adjusted_cost  bigint        NOT NULL,
    admin_fee      bigint        NOT NULL,
    driver_payout  bigint        NOT NULL,
    status         text          NOT NULL
        CHECK (status IN ('PENDING', 'DECLINED', 'FAILED', 'ACCEPTED')),
    attempts       integer       NOT NULL DEFAULT 0,
    provider_ref   text,                              -- the provider's reference once ACCEPTED
    created_at     timestamptz   NOT NULL,
    updated_at     timestamptz   NOT NULL
);
CREATE INDEX payments_status ON payments (status);

-- One row per match (projector `read_models.matches`).
CREATE TABLE matches (
    match_id       uuid          PRIMARY KEY,
    passenger_id   uuid          NOT NULL,
    status         text          NOT NULL
        CHECK (status IN ('SEARCHING', 'PROPOSED', 'DRIVER_ACCEPTED', 'CONFIRMED',
                          'CANCELLED', 'EXPIRED', 'FAILED')),
    round          integer       NOT NULL,
    radius_km      numeric(7,3)  NOT NULL,
    driver_id      uuid,                              -- the accepted driver (DRIVER_ACCEPTED, CONFIRMED)
    ride_id        uuid,                              -- the ride, once CONFIRMED
    requested_at   timestamptz   NOT NULL,
    updated_at     timestamptz   NOT NULL,            -- recorded_at of the last event applied
    last_sequence  bigint        NOT NULL             -- sequence of the last match event applied
);
CREATE INDEX matches_passenger ON matches (passenger_id, requested_at);
CREATE INDEX matches_status ON matches (status);
