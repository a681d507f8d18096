-- The event store: the only source of truth. Everything else is a projection.
-- See docs/adr/0001-event-store.md for why appends are serialized on one row.

-- The store's identity and its head. `store_id` is made once with the database, so
-- checkpoints kept outside PostgreSQL (Redis, JetStream) can be namespaced by it.
-- `head_position` is the last assigned position; writers lock this row for the length
-- of their transaction, which makes positions dense and committed in order.
CREATE TABLE event_store (
    singleton      boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    store_id       uuid        NOT NULL DEFAULT gen_random_uuid(),
    created_at     timestamptz NOT NULL DEFAULT now(),
    head_position  bigint      NOT NULL DEFAULT 0
);
INSERT INTO event_store DEFAULT VALUES;

CREATE TABLE events (
    position        bigint      PRIMARY KEY,           -- global order, dense, from 1
    aggregate_type  text        NOT NULL,              -- 'ride', 'match', ...
    aggregate_id    uuid        NOT NULL,
    sequence        bigint      NOT NULL CHECK (sequence >= 1),
    event_type      text        NOT NULL,              -- snake_case name: 'started'
    event_version   integer     NOT NULL CHECK (event_version >= 1),
    payload         jsonb       NOT NULL,
    metadata        jsonb       NOT NULL,              -- event_id, command_id, correlation_id, causation_id, actor, recorded_at
    recorded_at     timestamptz NOT NULL,
    hash            bytea       NOT NULL,              -- sha256 chained to the previous event of the aggregate
    -- optimistic concurrency: two writers of the same next sequence cannot both win
    CONSTRAINT events_stream_sequence UNIQUE (aggregate_type, aggregate_id, sequence)
);

-- One row per aggregate: its version and the hash of its last event (the chain head).
-- Kept in the same transaction as the events, so deleting an aggregate's last event is
-- detected by comparing the chain with this head.
CREATE TABLE streams (
    aggregate_type  text        NOT NULL,
    aggregate_id    uuid        NOT NULL,
    version         bigint      NOT NULL,
    head_hash       bytea       NOT NULL,
    updated_at      timestamptz NOT NULL,
    PRIMARY KEY (aggregate_id, aggregate_type)        -- id first: looked up by `aggregate_id = ANY(...)`
);

-- Command idempotency: the first answer to a command id, written in the same
-- transaction as its events (or alone, for a refusal).
CREATE TABLE command_log (
    command_key     text        PRIMARY KEY,
    aggregate_type  text        NOT NULL,
    aggregate_id    uuid        NOT NULL,
    response        jsonb       NOT NULL,
    first_position  bigint,                              -- null when nothing was appended
    recorded_at     timestamptz NOT NULL
);

-- Which open match or ride each passenger and driver is in (SPEC.md §3 Match rule 6).
-- Changed only by appends, in their transaction; the primary key is the invariant.
CREATE TABLE participant_reservations (
    user_id         uuid        PRIMARY KEY,
    aggregate_type  text        NOT NULL,
    aggregate_id    uuid        NOT NULL,
    since           timestamptz NOT NULL
);
CREATE INDEX participant_reservations_holder ON participant_reservations (aggregate_type, aggregate_id);

-- When the system must act on an aggregate by itself (a match round's timeout). Written
-- by appends; read by the deadline scheduler, so timeouts survive a restart.
CREATE TABLE deadlines (
    aggregate_type  text        NOT NULL,
    aggregate_id    uuid        NOT NULL,
    due_at          timestamptz NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id)
);
CREATE INDEX deadlines_due ON deadlines (due_at);

-- Positions of the in-database consumers of the feed (process managers, projectors).
CREATE TABLE checkpoints (
    name            text        PRIMARY KEY,
    position        bigint      NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
