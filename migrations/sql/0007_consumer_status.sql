-- What every consumer of the event feed last said about itself: each projector, the
-- outbox relay, the geo projection, the process manager and the deadline scheduler.
-- A consumer that cannot handle an event stops at it (it never skips one), retries
-- with a capped, jittered backoff and writes here why; `replay-tools status` lists
-- these rows with each consumer's live checkpoint and lag. Written by the running
-- processes only (never in an event's transaction), so it is advisory: the
-- checkpoints and the events stay the truth.
CREATE TABLE consumer_status (
    name              text        PRIMARY KEY,        -- the checkpoint name where there is one: rides, matches, relay.EVENTS, process.ride_creator; geo.<stream>, scheduler.deadlines
    kind              text        NOT NULL,           -- projector, relay, geo, process_manager, scheduler
    position          bigint      NOT NULL DEFAULT 0, -- the last position it reported as done
    lag               bigint,                         -- events behind the head when it reported (scheduler: deadlines overdue)
    stalled           boolean     NOT NULL DEFAULT false,
    stalled_at        bigint,                         -- the position (or for the scheduler, the first due deadline) it cannot get past
    stalled_since     timestamptz,
    attempts          integer     NOT NULL DEFAULT 0, -- tries since it stalled
    last_error        text,                           -- kept after it resumes, with its time
    last_error_at     timestamptz,
    reported_by       text        NOT NULL,           -- host:pid of the process that wrote the row
    updated_at        timestamptz NOT NULL DEFAULT now()
);
