-- Analyst aggregates over the read models: revenue and fees per hour or day, and
-- earnings per driver. They are SQL functions, not views, on purpose: a function's
-- body is bound by name when it runs, so a rebuild that switches in new `rides`
-- tables (projections::rebuild) leaves them working, where a view would pin the old
-- table. Documented in docs/read-models.md.

-- Completed rides by when they completed: the index behind both functions.
CREATE INDEX rides_completed_at ON rides (completed_at) WHERE status = 'COMPLETED';

-- Revenue per bucket ('hour' or 'day', UTC) of rides completed in [from_ts, to_ts).
CREATE FUNCTION analytics_revenue(bucket text, from_ts timestamptz, to_ts timestamptz)
RETURNS TABLE (
    bucket_start    timestamptz,   -- start of the hour or day (UTC)
    rides           bigint,        -- rides completed in it
    revenue         bigint,        -- sum of adjusted fares paid (rupiah)
    admin_fees      bigint,        -- platform share
    driver_payouts  bigint,        -- drivers' share
    distance_km     numeric        -- billed kilometres
)
LANGUAGE sql STABLE
AS $$
    SELECT date_trunc(CASE WHEN bucket = 'day' THEN 'day' ELSE 'hour' END, completed_at, 'UTC'),
           count(*), sum(adjusted_fare)::bigint, sum(admin_fee)::bigint, sum(driver_payout)::bigint,
           sum(distance_km)
    FROM rides
    WHERE status = 'COMPLETED' AND completed_at >= from_ts AND completed_at < to_ts
    GROUP BY 1
    ORDER BY 1
$$;

-- Earnings per driver of rides completed in [from_ts, to_ts), highest first.
CREATE FUNCTION analytics_driver_earnings(from_ts timestamptz, to_ts timestamptz)
RETURNS TABLE (
    driver_id       uuid,
    rides           bigint,        -- rides completed
    distance_km     numeric,       -- billed kilometres
    revenue         bigint,        -- what passengers paid for them
    admin_fees      bigint,        -- the platform's share
    earnings        bigint         -- the driver's payout
)
LANGUAGE sql STABLE
AS $$
    SELECT driver_id, count(*), sum(distance_km), sum(adjusted_fare)::bigint, sum(admin_fee)::bigint,
           sum(driver_payout)::bigint
    FROM rides
    WHERE status = 'COMPLETED' AND completed_at >= from_ts AND completed_at < to_ts
    GROUP BY driver_id
    ORDER BY 6 DESC, 1
$$;
