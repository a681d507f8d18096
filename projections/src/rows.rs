//! The rides read models as plain Rust rows: folded from events in memory, read back
//! from the tables, and written with `COPY`.
//!
//! This is the bulk path. [`crate::RidesProjector`] keeps the live tables current a
//! batch at a time with SQL; [`RideFold`] computes the same rows from the events
//! alone, which is what a rebuild (write them with [`copy_rows`]) and an audit (compare
//! them with [`read_live`]) need. The two are independent implementations of one
//! mapping, and `verify` holding on every test workload is what keeps them equal.
//!
//! Distances are whole metres and factors basis points here (the tables hold
//! `numeric`), so comparisons are exact.

use std::collections::HashMap;
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use domain::ride::{CancelledBy, RideEvent};
use sqlx::{PgConnection, Postgres, Transaction};
use uuid::Uuid;

use crate::copy_text::{copy_in_statement, CopyRow};
use crate::runtime::ProjectionError;

/// One row of `rides`.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct RideRow {
    pub ride_id: Uuid,
    pub match_id: Uuid,
    pub driver_id: Uuid,
    pub passenger_id: Uuid,
    pub status: String,
    pub pickup_lat: f64,
    pub pickup_lon: f64,
    pub destination_lat: f64,
    pub destination_lon: f64,
    pub distance_m: Option<i64>,
    pub fare: Option<i64>,
    pub adjusted_fare: Option<i64>,
    pub admin_fee: Option<i64>,
    pub driver_payout: Option<i64>,
    pub adjustment_bps: Option<i32>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub arrived_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub cancelled_at: Option<DateTime<Utc>>,
    pub cancelled_by: Option<String>,
    pub cancel_reason: Option<String>,
    pub last_sequence: i64,
    pub last_hash: Vec<u8>,
    pub updated_position: i64,
}

/// One row of `billing_ledger`.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct LedgerRow {
    pub entry_id: Uuid,
    pub ride_id: Uuid,
    pub kind: String,
    pub distance_m: Option<i64>,
    pub cost: i64,
    pub position: i64,
    pub recorded_at: DateTime<Utc>,
}

/// One row of `payments`.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct PaymentRow {
    pub payment_id: Uuid,
    pub ride_id: Uuid,
    pub adjusted_cost: i64,
    pub admin_fee: i64,
    pub driver_payout: i64,
    pub status: String,
    pub attempts: i32,
    pub provider_ref: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Where an event sits in the store (what a row records about it).
#[derive(Clone, Copy, Debug)]
pub struct At<'a> {
    pub position: i64,
    pub sequence: i64,
    pub recorded_at: DateTime<Utc>,
    pub hash: &'a [u8],
}

/// The three tables of [`crate::RidesProjector`], folded from ride events.
#[derive(Debug, Default)]
pub struct RideFold {
    pub rides: HashMap<Uuid, RideRow>,
    pub ledger: Vec<LedgerRow>,
    pub payments: HashMap<Uuid, PaymentRow>,
}

impl RideFold {
    /// Applies one ride event of ride `ride` (events of a ride in sequence order).
    pub fn apply(&mut self, ride: Uuid, at: At<'_>, event: RideEvent) {
        let entry = |entry_id: Uuid, kind: &str, distance_m: Option<i64>, cost: i64| LedgerRow {
            entry_id,
            ride_id: ride,
            kind: kind.to_owned(),
            distance_m,
            cost,
            position: at.position,
            recorded_at: at.recorded_at,
        };
        if let RideEvent::Created {
            ride_id,
            match_id,
            driver_id,
            passenger_id,
            pickup,
            destination,
            created_at,
        } = &event
        {
            self.rides.entry(ride).or_insert_with(|| RideRow {
                ride_id: ride_id.as_uuid(),
                match_id: match_id.as_uuid(),
                driver_id: driver_id.as_uuid(),
                passenger_id: passenger_id.as_uuid(),
                status: "PENDING".into(),
                pickup_lat: pickup.lat(),
                pickup_lon: pickup.lon(),
                destination_lat: destination.lat(),
                destination_lon: destination.lon(),
                distance_m: None,
                fare: None,
                adjusted_fare: None,
                admin_fee: None,
                driver_payout: None,
                adjustment_bps: None,
                created_at: *created_at,
                started_at: None,
                arrived_at: None,
                completed_at: None,
                cancelled_at: None,
                cancelled_by: None,
                cancel_reason: None,
                last_sequence: at.sequence,
                last_hash: at.hash.to_vec(),
                updated_position: at.position,
            });
            return;
        }
        // The payment rows change on payment events; the ride row on the others.
        match &event {
            RideEvent::PaymentDeclined {
                payment_id,
                attempt,
                at: when,
            }
            | RideEvent::PaymentFailed {
                payment_id,
                attempt,
                at: when,
                ..
            } => {
                let status = if matches!(event, RideEvent::PaymentDeclined { .. }) {
                    "DECLINED"
                } else {
                    "FAILED"
                };
                self.payment_attempt(payment_id.as_uuid(), status, *attempt, None, *when);
            }
            RideEvent::PaymentAccepted {
                payment_id,
                attempt,
                provider_ref,
                at: when,
                ..
            } => self.payment_attempt(
                payment_id.as_uuid(),
                "ACCEPTED",
                *attempt,
                Some(provider_ref),
                *when,
            ),
            _ => {}
        }
        let Some(row) = self.rides.get_mut(&ride) else {
            return; // events without a `created`: nothing a row could say
        };
        match event {
            RideEvent::Created { .. }
            | RideEvent::TripPointRejected { .. }
            | RideEvent::PaymentDeclined { .. }
            | RideEvent::PaymentFailed { .. }
            | RideEvent::PaymentAccepted { .. } => {}
            RideEvent::Started { started_at, .. } => {
                row.status = "IN_PROGRESS".into();
                row.started_at = Some(started_at);
                row.distance_m = Some(0);
            }
            RideEvent::TripPointRecorded {
                entry_id,
                segment_m,
                cum_m,
                cost,
                ..
            } => {
                row.distance_m = Some(cum_m);
                self.ledger.push(entry(
                    entry_id.as_uuid(),
                    "trip_segment",
                    Some(segment_m),
                    cost.get(),
                ));
            }
            RideEvent::Arrived {
                arrived_at,
                distance_m,
                fare,
                fare_adjustment,
                adjustment_factor,
                adjusted_fare,
                discount,
                admin_fee,
                driver_payout,
                payment_id,
                ..
            } => {
                row.status = "ARRIVED".into();
                row.arrived_at = Some(arrived_at);
                row.distance_m = Some(distance_m);
                row.fare = Some(fare.get());
                row.adjusted_fare = Some(adjusted_fare.get());
                row.admin_fee = Some(admin_fee.get());
                row.driver_payout = Some(driver_payout.get());
                row.adjustment_bps = i32::try_from(adjustment_factor.bps()).ok();
                for e in [fare_adjustment, discount].into_iter().flatten() {
                    self.ledger
                        .push(entry(e.entry_id.as_uuid(), e.kind.as_str(), None, e.cost.get()));
                }
                self.payments.entry(payment_id.as_uuid()).or_insert(PaymentRow {
                    payment_id: payment_id.as_uuid(),
                    ride_id: ride,
                    adjusted_cost: adjusted_fare.get(),
                    admin_fee: admin_fee.get(),
                    driver_payout: driver_payout.get(),
                    status: "PENDING".into(),
                    attempts: 0,
                    provider_ref: None,
                    created_at: arrived_at,
                    updated_at: arrived_at,
                });
            }
            RideEvent::Completed { completed_at, .. } => {
                row.status = "COMPLETED".into();
                row.completed_at = Some(completed_at);
            }
            RideEvent::Cancelled {
                by,
                reason,
                cancelled_at,
                ..
            } => {
                row.status = "CANCELLED".into();
                row.cancelled_at = Some(cancelled_at);
                row.cancelled_by = Some(
                    match by {
                        CancelledBy::Driver => "driver",
                        CancelledBy::Passenger => "passenger",
                    }
                    .into(),
                );
                row.cancel_reason = Some(reason);
            }
        }
        row.last_sequence = at.sequence;
        row.last_hash = at.hash.to_vec();
        row.updated_position = at.position;
    }

    fn payment_attempt(
        &mut self,
        payment: Uuid,
        status: &str,
        attempt: u32,
        provider_ref: Option<&str>,
        at: DateTime<Utc>,
    ) {
        let Some(row) = self.payments.get_mut(&payment) else {
            return;
        };
        let attempt = i32::try_from(attempt).unwrap_or(i32::MAX);
        if row.attempts < attempt {
            row.status = status.to_owned();
            row.attempts = attempt;
            if let Some(r) = provider_ref {
                row.provider_ref = Some(r.to_owned());
            }
            row.updated_at = at;
        }
    }
}

/// A ride event as the bulk readers fetch it: the payload as text, parsed straight into
/// the domain type (no intermediate JSON tree).
#[derive(Debug, sqlx::FromRow)]
struct RawRideEvent {
    position: i64,
    aggregate_id: Uuid,
    sequence: i64,
    event_type: String,
    event_version: i32,
    payload: String,
    recorded_at: DateTime<Utc>,
    hash: Vec<u8>,
}

/// Reads a ride event from its stored name and payload text.
pub fn parse_ride_event(event_type: &str, event_version: i32, payload: &str) -> Result<RideEvent, String> {
    if event_version != 1 {
        return Err(format!("no upcaster for ride.{event_type}.v{event_version}"));
    }
    let tagged = format!(
        "{{\"event_type\":{},\"payload\":{payload}}}",
        serde_json::Value::String(event_type.to_owned())
    );
    serde_json::from_str(&tagged).map_err(|e| e.to_string())
}

/// Folds the ride events with `after < position <= up_to` (of the rides in `only`, or
/// all) into rows, calling `progress(position, up_to)` every 10,000 events.
pub async fn fold_rides(
    conn: &mut PgConnection,
    after: i64,
    up_to: i64,
    only: Option<&[Uuid]>,
    progress: &(dyn Fn(i64, i64) + Sync),
) -> Result<RideFold, ProjectionError> {
    fold_rides_streaming(conn, after, up_to, only, progress, None).await
}

/// [`fold_rides`], handing the ledger rows (which never change once booked) to
/// `ledger_out` as COPY text every 10,000 events instead of keeping them.
async fn fold_rides_streaming(
    conn: &mut PgConnection,
    after: i64,
    up_to: i64,
    only: Option<&[Uuid]>,
    progress: &(dyn Fn(i64, i64) + Sync),
    ledger_out: Option<&tokio::sync::mpsc::Sender<String>>,
) -> Result<RideFold, ProjectionError> {
    use futures::TryStreamExt;
    let ids: Vec<Uuid> = only.map(<[Uuid]>::to_vec).unwrap_or_default();
    let sql = format!(
        "SELECT position, aggregate_id, sequence, event_type, event_version, payload::text AS payload, \
         recorded_at, hash FROM events WHERE aggregate_type = 'ride' AND position > $1 AND position <= $2{} \
         ORDER BY position",
        if only.is_some() {
            " AND aggregate_id = ANY($3)"
        } else {
            ""
        }
    );
    let mut fold = RideFold::default();
    let mut rows = sqlx::query_as::<_, RawRideEvent>(&sql)
        .bind(after)
        .bind(up_to)
        .bind(&ids)
        .fetch(&mut *conn);
    let mut n = 0u64;
    while let Some(raw) = rows.try_next().await? {
        let event = parse_ride_event(&raw.event_type, raw.event_version, &raw.payload).map_err(|reason| {
            ProjectionError::Corrupt {
                position: raw.position,
                aggregate_type: "ride".into(),
                event_type: raw.event_type.clone(),
                event_version: raw.event_version,
                reason,
            }
        })?;
        fold.apply(
            raw.aggregate_id,
            At {
                position: raw.position,
                sequence: raw.sequence,
                recorded_at: raw.recorded_at,
                hash: &raw.hash,
            },
            event,
        );
        n += 1;
        if n.is_multiple_of(10_000) {
            progress(raw.position, up_to);
            if let Some(out) = ledger_out {
                let rows = std::mem::take(&mut fold.ledger);
                if out.send(ledger_text(&rows)).await.is_err() {
                    break; // the writer failed; its error is reported by the caller
                }
            }
        }
    }
    if let Some(out) = ledger_out {
        let rows = std::mem::take(&mut fold.ledger);
        let _ = out.send(ledger_text(&rows)).await;
    }
    Ok(fold)
}

/// Fills `schema`'s (empty) `rides`, `billing_ledger` and `payments` with every ride
/// event up to `up_to`, in bulk: the events are folded in memory while a second
/// connection COPYs the ledger rows as they are booked (they never change), then the
/// rides and payments are COPYed. Both transactions commit before it returns.
pub async fn bulk_fill(
    pool: &sqlx::PgPool,
    schema: &str,
    up_to: i64,
    progress: &(dyn Fn(i64, i64) + Sync),
) -> Result<(), ProjectionError> {
    let (send, mut recv) = tokio::sync::mpsc::channel::<String>(4);
    let (ledger_pool, ledger_schema) = (pool.clone(), schema.to_owned());
    let ledger = tokio::spawn(async move {
        let mut tx = ledger_pool.begin().await?;
        crate::runtime::use_schema(&mut tx, &ledger_schema).await?;
        let mut sink = tx.copy_in_raw(&copy_in_statement::<LedgerRow>()).await?;
        while let Some(chunk) = recv.recv().await {
            if !chunk.is_empty() {
                sink.send(chunk.into_bytes()).await?;
            }
        }
        sink.finish().await?;
        tx.commit().await
    });
    let folded = {
        let mut conn = pool.acquire().await?;
        fold_rides_streaming(&mut conn, 0, up_to, None, progress, Some(&send)).await
    };
    drop(send);
    let written = ledger
        .await
        .map_err(|e| ProjectionError::OutOfRange(format!("the ledger writer stopped: {e}")))?;
    let fold = folded?;
    written?;
    let mut tx = pool.begin().await?;
    crate::runtime::use_schema(&mut tx, schema).await?;
    copy_rows(&mut tx, &fold).await?;
    tx.commit().await?;
    Ok(())
}

fn ledger_text(rows: &[LedgerRow]) -> String {
    let mut data = String::with_capacity(rows.len() * 160);
    for e in rows {
        e.write_copy(&mut data);
    }
    data
}

/// The live rows of the three tables (of the rides in `only`, or all), as the fold
/// computes them. `search_path` decides which schema is read.
pub async fn read_live(conn: &mut PgConnection, only: Option<&[Uuid]>) -> Result<RideFold, sqlx::Error> {
    let filter = |column: &str| match only {
        Some(_) => format!(" WHERE {column} = ANY($1)"),
        None => String::new(),
    };
    let ids: Vec<Uuid> = only.map(<[Uuid]>::to_vec).unwrap_or_default();
    let rides: Vec<RideRow> = sqlx::query_as(&format!(
        "SELECT ride_id, match_id, driver_id, passenger_id, status, \
         pickup_lat, pickup_lon, destination_lat, destination_lon, \
         (distance_km * 1000)::int8 AS distance_m, fare, adjusted_fare, admin_fee, driver_payout, \
         (adjustment_factor * 10000)::int4 AS adjustment_bps, created_at, started_at, arrived_at, \
         completed_at, cancelled_at, cancelled_by, cancel_reason, last_sequence, last_hash, updated_position \
         FROM rides{}",
        filter("ride_id")
    ))
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    let ledger: Vec<LedgerRow> = sqlx::query_as(&format!(
        "SELECT entry_id, ride_id, kind, (distance_km * 1000)::int8 AS distance_m, cost, position, recorded_at \
         FROM billing_ledger{}",
        filter("ride_id")
    ))
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    let payments: Vec<PaymentRow> = sqlx::query_as(&format!(
        "SELECT payment_id, ride_id, adjusted_cost, admin_fee, driver_payout, status, attempts, provider_ref, \
         created_at, updated_at FROM payments{}",
        filter("ride_id")
    ))
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    Ok(RideFold {
        rides: rides.into_iter().map(|r| (r.ride_id, r)).collect(),
        ledger,
        payments: payments.into_iter().map(|p| (p.payment_id, p)).collect(),
    })
}

/// How a folded table differs from a live one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowDiff {
    /// `rides`, `billing_ledger` or `payments`.
    pub table: &'static str,
    /// The ride the row belongs to.
    pub ride_id: Uuid,
    /// The row's key.
    pub key: Uuid,
    /// What differs: `missing` (the events have it, the table not), `unexpected` (the
    /// table has it, the events not), or `column: events=… table=…`.
    pub what: String,
}

impl std::fmt::Display for RowDiff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ride {} row {}: {}",
            self.table, self.ride_id, self.key, self.what
        )
    }
}

fn diff_debug<T: std::fmt::Debug + PartialEq>(expected: &T, actual: &T) -> String {
    // Field by field from the Debug renderings: small rows, readable output.
    let e = format!("{expected:?}");
    let a = format!("{actual:?}");
    let fields = |s: &str| -> Vec<String> {
        let inner = s.split_once('{').map_or(s, |(_, r)| r).trim_end_matches('}');
        inner.split(", ").map(|f| f.trim().to_owned()).collect()
    };
    let (ef, af) = (fields(&e), fields(&a));
    let mut out = String::new();
    for (x, y) in ef.iter().zip(af.iter()) {
        if x != y {
            let _ = write!(
                out,
                "{}events: {x} / table: {y}",
                if out.is_empty() { "" } else { "; " }
            );
        }
    }
    if out.is_empty() {
        out = format!("events: {e} / table: {a}");
    }
    out
}

/// Every difference between what the events say (`expected`) and the tables
/// (`actual`), ordered by table and key.
pub fn diff(expected: &RideFold, actual: &RideFold) -> Vec<RowDiff> {
    let mut out = Vec::new();
    fn rides(f: &RideFold) -> Keyed<'_, RideRow> {
        f.rides.iter().map(|(k, r)| (*k, (r.ride_id, r))).collect()
    }
    fn ledger(f: &RideFold) -> Keyed<'_, LedgerRow> {
        f.ledger.iter().map(|r| (r.entry_id, (r.ride_id, r))).collect()
    }
    fn payments(f: &RideFold) -> Keyed<'_, PaymentRow> {
        f.payments.iter().map(|(k, r)| (*k, (r.ride_id, r))).collect()
    }
    diff_table(&mut out, "rides", &rides(expected), &rides(actual));
    diff_table(&mut out, "billing_ledger", &ledger(expected), &ledger(actual));
    diff_table(&mut out, "payments", &payments(expected), &payments(actual));
    out
}

/// Rows keyed by their id, each with its ride.
type Keyed<'a, T> = HashMap<Uuid, (Uuid, &'a T)>;

fn diff_table<T: std::fmt::Debug + PartialEq>(
    out: &mut Vec<RowDiff>,
    table: &'static str,
    expected: &Keyed<'_, T>,
    actual: &Keyed<'_, T>,
) {
    let mut found = Vec::new();
    for (key, (ride, e)) in expected {
        match actual.get(key) {
            Some((_, a)) if a == e => {}
            Some((_, a)) => found.push((*key, *ride, diff_debug(*e, *a))),
            None => found.push((*key, *ride, "missing".into())),
        }
    }
    for (key, (ride, _)) in actual {
        if !expected.contains_key(key) {
            found.push((*key, *ride, "unexpected".into()));
        }
    }
    found.sort_unstable_by_key(|(key, ride, _)| (*ride, *key));
    out.extend(found.into_iter().map(|(key, ride_id, what)| RowDiff {
        table,
        ride_id,
        key,
        what,
    }));
}

// ---- COPY -------------------------------------------------------------------------

/// `bytea` in COPY text format: `\\x` and hex digits.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(2 + bytes.len() * 2);
    s.push_str("\\x");
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Appends one row as a COPY text-format line (fields tab-separated, `None` as `\N`,
/// text escaped as [`crate::copy_text::Line::text`] does).
pub fn copy_line(out: &mut String, fields: &[Option<String>]) {
    let mut line = crate::copy_text::Line::new(out);
    for f in fields {
        line.opt(f.as_deref(), crate::copy_text::Line::text);
    }
    line.end();
}

async fn copy(tx: &mut Transaction<'_, Postgres>, statement: &str, data: String) -> Result<u64, sqlx::Error> {
    let mut sink = tx.copy_in_raw(statement).await?;
    sink.send(data.into_bytes()).await?;
    sink.finish().await
}

/// Chunked COPY: the rows are rendered and sent a few thousand at a time.
const COPY_CHUNK: usize = 20_000;

/// COPYs the fold into the tables `search_path` resolves. Returns the rows written.
/// Each row is the line [`CopyRow::write_copy`] renders: the bytes `verify` expects the
/// live tables to print back.
pub async fn copy_rows(tx: &mut Transaction<'_, Postgres>, fold: &RideFold) -> Result<u64, sqlx::Error> {
    Ok(copy_all(tx, fold.rides.values()).await?
        + copy_all(tx, fold.ledger.iter()).await?
        + copy_all(tx, fold.payments.values()).await?)
}

/// COPYs `rows` into their table, a few thousand at a time.
async fn copy_all<'r, T: CopyRow + 'r>(
    tx: &mut Transaction<'_, Postgres>,
    rows: impl Iterator<Item = &'r T>,
) -> Result<u64, sqlx::Error> {
    let rows: Vec<&T> = rows.collect();
    let statement = copy_in_statement::<T>();
    let mut written = 0;
    for chunk in rows.chunks(COPY_CHUNK) {
        let mut data = String::with_capacity(chunk.len() * 256);
        for row in chunk {
            row.write_copy(&mut data);
        }
        written += copy(tx, &statement, data).await?;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_fields_escape_what_the_text_format_treats_specially() {
        let mut out = String::new();
        copy_line(&mut out, &[Some("a\tb\\c\nd".into()), None, Some(String::new())]);
        assert_eq!(out, "a\\tb\\\\c\\nd\t\\N\t\n");
    }

    #[test]
    fn hex_and_the_ledger_copy_statement() {
        assert_eq!(hex(&[0, 255]), "\\x00ff");
        assert_eq!(
            copy_in_statement::<LedgerRow>(),
            "COPY billing_ledger (entry_id, ride_id, kind, distance_km, cost, position, recorded_at) FROM STDIN"
        );
    }
}
