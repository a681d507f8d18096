-- One row per `replay-tools verify` run: what it checked and what it found, so that
-- operators (and the console at /console) see when the store was last verified and
-- whether it passed. Written by `replay-tools verify` when it finishes; never read by
-- the system itself.
CREATE TABLE verify_runs (
    run_id        bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at    timestamptz NOT NULL,
    finished_at   timestamptz NOT NULL,
    window_from   timestamptz,                 -- --from, when only a window was checked
    window_to     timestamptz,                 -- --to
    passed        boolean     NOT NULL,        -- every chain intact, every row agreeing
    events        bigint      NOT NULL,        -- events read and hash-checked
    aggregates    bigint      NOT NULL,        -- aggregates whose chain was checked
    rides         bigint      NOT NULL,        -- rides folded and compared
    chain_breaks  integer     NOT NULL,        -- broken chains found
    row_diffs     integer     NOT NULL,        -- read-model rows differing from the events
    unreadable    integer     NOT NULL,        -- events that could not be read
    findings      jsonb       NOT NULL DEFAULT '[]'  -- the first 100 findings, as printed
);
CREATE INDEX verify_runs_finished ON verify_runs (finished_at);
