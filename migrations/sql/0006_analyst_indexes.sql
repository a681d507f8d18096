-- An index behind every documented analyst filter and order (docs/security.md,
-- "Hostile input and abuse limits"; api::reads), so that no analyst query scans
-- `rides`, `payments` or `billing_ledger` whole. nebengjek/tests/analyst_plans.rs reads
-- the plan of each filter at 100k rows and fails on a sequential scan.
-- Already indexed: rides by driver_id and passenger_id (with created_at), rides
-- completed by completed_at (revenue), billing_ledger by ride_id and recorded_at,
-- payments by ride_id (unique).

-- GET /v1/rides: newest first, with or without a time range; and by status.
CREATE INDEX rides_created ON rides (created_at DESC, ride_id DESC);
CREATE INDEX rides_status_created ON rides (status, created_at DESC, ride_id DESC);

-- GET /v1/payments: newest first, with or without a time range; and by status.
CREATE INDEX payments_created ON payments (created_at DESC, payment_id DESC);
CREATE INDEX payments_status_created ON payments (status, created_at DESC, payment_id DESC);

-- GET /v1/billing/ledger: in feed order.
CREATE INDEX billing_ledger_position ON billing_ledger (position, entry_id);
