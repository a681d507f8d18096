//! Reads over the read models of `migrations/sql/0002_read_models.sql` (`rides`,
//! `billing_ledger`, `payments`): a ride for its participants (and analysts), a user's
//! history, and the analysts' queries.
//!
//! A ride that exists but is not the caller's is 404, like one that does not exist, so
//! ids cannot be probed. Lists are newest first with keyset pagination: `next_cursor`
//! is the last row's `(created_at, ride_id)`, opaque to clients. Every filter is a bound
//! parameter of one static statement (`$n IS NULL OR column = $n`), never spliced text.

use axum::extract::{Path, State};
use axum::Json;
use chrono::{DateTime, TimeDelta, Utc};
use domain::Role;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::error::{ApiError, ApiQuery, ErrorResponse};
use crate::token::{Analyst, Caller};
use crate::AppState;

/// The default page size.
pub const DEFAULT_LIMIT: i64 = 50;
/// The largest page.
pub const MAX_LIMIT: i64 = 500;

/// The bounds of every analyst query (docs/security.md, "Hostile input and abuse
/// limits"): a query that asks for more is refused with `validation_failed` before it
/// reaches PostgreSQL, and one that still runs too long is cancelled by PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnalystLimits {
    /// `ANALYST_MAX_RANGE_DAYS` (366): the longest `from`..`to` span (a missing `to` is
    /// now).
    pub max_range: TimeDelta,
    /// `ANALYST_MAX_PAGE` (500): the largest `limit`.
    pub max_page: i64,
    /// `ANALYST_STATEMENT_TIMEOUT_MS` (5000): PostgreSQL's `statement_timeout` for each
    /// analyst query.
    pub statement_timeout_ms: u64,
}

impl Default for AnalystLimits {
    fn default() -> Self {
        Self {
            max_range: TimeDelta::days(366),
            max_page: MAX_LIMIT,
            statement_timeout_ms: 5000,
        }
    }
}

impl AnalystLimits {
    /// The page size asked for, within bounds (`default` when absent).
    fn page(&self, limit: Option<i64>, default: i64) -> Result<i64, ApiError> {
        match limit {
            None => Ok(default.min(self.max_page)),
            Some(n) if (1..=self.max_page).contains(&n) => Ok(n),
            Some(_) => Err(ApiError::validation(format!(
                "limit must be between 1 and {}",
                self.max_page
            ))),
        }
    }

    /// `from`..`to` (a missing `to` is `now`) within the longest span.
    fn range(
        &self,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<(), ApiError> {
        let Some(from) = from else {
            return Ok(());
        };
        let to = to.unwrap_or(now);
        if from >= to {
            return Err(ApiError::validation("from must be before to"));
        }
        if to - from > self.max_range {
            return Err(ApiError::validation(format!(
                "from..to spans more than {} days; ask for a shorter range",
                self.max_range.num_days()
            )));
        }
        Ok(())
    }
}

/// An analyst query's transaction, with `SET LOCAL statement_timeout`: PostgreSQL
/// cancels the query past the limit, and [`cancelled`] makes that a
/// `validation_failed` (ask for less), never a 500.
async fn bounded(state: &AppState) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, ApiError> {
    let mut tx = state.pool().begin().await?;
    limit_transaction(&mut tx, state.config().analyst.statement_timeout_ms).await?;
    Ok(tx)
}

/// A query cancelled by `statement_timeout` (SQLSTATE 57014) as `validation_failed`.
fn cancelled(state: &AppState) -> impl Fn(sqlx::Error) -> ApiError + '_ {
    move |error| match &error {
        sqlx::Error::Database(e) if e.code().as_deref() == Some("57014") => ApiError::validation(format!(
            "the query ran longer than {} ms (ANALYST_STATEMENT_TIMEOUT_MS); narrow its filters or range",
            state.config().analyst.statement_timeout_ms
        )),
        _ => error.into(),
    }
}

/// The settings of an analyst query's transaction: `statement_timeout`, and custom plans
/// only. A statement prepared on a pooled connection is planned generically after five
/// runs, and a generic plan of `($1 IS NULL OR status = $1)` cannot use an index: with
/// `force_custom_plan` every run is planned for its own filters.
pub async fn limit_transaction(
    conn: &mut sqlx::PgConnection,
    statement_timeout_ms: u64,
) -> Result<(), sqlx::Error> {
    sqlx::query(&format!("SET LOCAL statement_timeout = {statement_timeout_ms}"))
        .execute(&mut *conn)
        .await?;
    sqlx::query("SET LOCAL plan_cache_mode = force_custom_plan")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The statement of `GET /v1/rides` (the EXPLAIN test plans it).
pub const RIDES_SQL: &str = "WHERE ($1::text IS NULL OR status = $1) \
         AND ($2::uuid IS NULL OR driver_id = $2) AND ($3::uuid IS NULL OR passenger_id = $3) \
         AND ($4::timestamptz IS NULL OR created_at >= $4) AND ($5::timestamptz IS NULL OR created_at < $5) \
         AND ($6::timestamptz IS NULL OR (created_at, ride_id) < ($6, $7)) \
         ORDER BY created_at DESC, ride_id DESC LIMIT $8";

/// The statement of `GET /v1/billing/ledger`.
pub const LEDGER_SQL: &str = "SELECT entry_id, ride_id, kind, distance_km::float8 AS distance_km, cost, position, recorded_at \
         FROM billing_ledger WHERE ($1::uuid IS NULL OR ride_id = $1) \
         AND ($2::timestamptz IS NULL OR recorded_at >= $2) AND ($3::timestamptz IS NULL OR recorded_at < $3) \
         ORDER BY position, entry_id LIMIT $4";

/// The statement of `GET /v1/payments`.
pub const PAYMENTS_SQL: &str =
    "SELECT payment_id, ride_id, adjusted_cost, admin_fee, driver_payout, status, attempts, provider_ref, \
         created_at, updated_at FROM payments WHERE ($1::text IS NULL OR status = $1) \
         AND ($2::uuid IS NULL OR ride_id = $2) AND ($3::timestamptz IS NULL OR created_at >= $3) \
         AND ($4::timestamptz IS NULL OR created_at < $4) ORDER BY created_at DESC, payment_id DESC LIMIT $5";

/// The statement of `GET /v1/analytics/revenue`.
pub const REVENUE_SQL: &str = "SELECT bucket_start, rides, revenue, admin_fees, driver_payouts, \
         COALESCE(distance_km, 0)::float8 AS distance_km FROM analytics_revenue($1, $2, $3)";

/// The full statement of `GET /v1/rides`.
pub fn rides_sql() -> String {
    format!("SELECT {RIDE_COLUMNS} FROM rides {RIDES_SQL}")
}

/// A row of `rides` (see `docs/read-models.md` for every column).
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct RideRow {
    /// The ride.
    pub ride_id: Uuid,
    /// The match it came from.
    pub match_id: Uuid,
    /// Its driver.
    pub driver_id: Uuid,
    /// Its passenger.
    pub passenger_id: Uuid,
    /// `PENDING`, `IN_PROGRESS`, `ARRIVED`, `COMPLETED` or `CANCELLED`.
    pub status: String,
    /// Pickup latitude.
    pub pickup_lat: f64,
    /// Pickup longitude.
    pub pickup_lon: f64,
    /// Destination latitude.
    pub destination_lat: f64,
    /// Destination longitude.
    pub destination_lon: f64,
    /// Billed distance so far, km to the metre.
    pub distance_km: Option<f64>,
    /// The clamped fare (from arrival).
    pub fare: Option<i64>,
    /// What the passenger pays (from arrival).
    pub adjusted_fare: Option<i64>,
    /// The platform's share.
    pub admin_fee: Option<i64>,
    /// The driver's share.
    pub driver_payout: Option<i64>,
    /// The driver's factor in (0, 1].
    pub adjustment_factor: Option<f64>,
    /// When the ride was created.
    pub created_at: DateTime<Utc>,
    /// When it started.
    pub started_at: Option<DateTime<Utc>>,
    /// When the driver arrived.
    pub arrived_at: Option<DateTime<Utc>>,
    /// When it was paid.
    pub completed_at: Option<DateTime<Utc>>,
    /// When it was cancelled.
    pub cancelled_at: Option<DateTime<Utc>>,
    /// `driver` or `passenger`.
    pub cancelled_by: Option<String>,
    /// Why.
    pub cancel_reason: Option<String>,
}

const RIDE_COLUMNS: &str = "ride_id, match_id, driver_id, passenger_id, status, pickup_lat, pickup_lon, \
    destination_lat, destination_lon, distance_km::float8 AS distance_km, fare, adjusted_fare, admin_fee, \
    driver_payout, adjustment_factor::float8 AS adjustment_factor, created_at, started_at, arrived_at, \
    completed_at, cancelled_at, cancelled_by, cancel_reason";

/// A page of rides.
#[derive(Debug, Serialize, ToSchema)]
pub struct RidePage {
    /// Newest first.
    pub rides: Vec<RideRow>,
    /// Pass as `cursor` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

fn limit_of(limit: Option<i64>) -> Result<i64, ApiError> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::validation(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        ))),
    }
}

/// A keyset cursor: the last row's creation time (µs) and id.
fn parse_cursor(cursor: Option<&str>) -> Result<(Option<DateTime<Utc>>, Option<Uuid>), ApiError> {
    let Some(cursor) = cursor else {
        return Ok((None, None));
    };
    let bad = || ApiError::validation("cursor is not one this API gave out");
    let (micros, id) = cursor.split_once('_').ok_or_else(bad)?;
    let micros: i64 = micros.parse().map_err(|_| bad())?;
    let at = DateTime::<Utc>::from_timestamp_micros(micros).ok_or_else(bad)?;
    let id: Uuid = id.parse().map_err(|_| bad())?;
    Ok((Some(at), Some(id)))
}

fn page(rides: Vec<RideRow>, limit: i64) -> RidePage {
    let next_cursor = if rides.len() as i64 == limit {
        rides
            .last()
            .map(|r| format!("{}_{}", r.created_at.timestamp_micros(), r.ride_id))
    } else {
        None
    };
    RidePage { rides, next_cursor }
}

/// One ride: its participants and analysts see it; anyone else gets 404.
#[utoipa::path(get, path = "/v1/rides/{id}", tag = "rides", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The ride id")),
    responses((status = 200, body = RideRow), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn ride(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path(id): Path<String>,
) -> Result<Json<RideRow>, ApiError> {
    let not_found = || ApiError::not_found("no such ride");
    let id: Uuid = id.parse().map_err(|_| not_found())?;
    let row: Option<RideRow> =
        sqlx::query_as(&format!("SELECT {RIDE_COLUMNS} FROM rides WHERE ride_id = $1"))
            .bind(id)
            .fetch_optional(state.pool())
            .await?;
    let me = actor.user_id.as_uuid();
    match row {
        Some(row) if actor.role == Role::Analyst || row.driver_id == me || row.passenger_id == me => {
            Ok(Json(row))
        }
        _ => Err(not_found()),
    }
}

/// `GET /v1/me/rides` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Page size, 1..=500 (50).
    pub limit: Option<i64>,
    /// From the previous page's `next_cursor`.
    pub cursor: Option<String>,
}

/// The caller's rides, as driver or passenger, newest first.
#[utoipa::path(get, path = "/v1/me/rides", tag = "rides", security(("bearer" = [])), params(HistoryQuery),
    responses((status = 200, body = RidePage), (status = 401, body = ErrorResponse), (status = 422, body = ErrorResponse)))]
pub async fn my_rides(
    State(state): State<AppState>,
    Caller(actor): Caller,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> Result<Json<RidePage>, ApiError> {
    let limit = limit_of(query.limit)?;
    let (before_at, before_id) = parse_cursor(query.cursor.as_deref())?;
    let rows: Vec<RideRow> = sqlx::query_as(&format!(
        "SELECT {RIDE_COLUMNS} FROM rides WHERE (driver_id = $1 OR passenger_id = $1) \
         AND ($2::timestamptz IS NULL OR (created_at, ride_id) < ($2, $3)) \
         ORDER BY created_at DESC, ride_id DESC LIMIT $4"
    ))
    .bind(actor.user_id.as_uuid())
    .bind(before_at)
    .bind(before_id)
    .bind(limit)
    .fetch_all(state.pool())
    .await?;
    Ok(Json(page(rows, limit)))
}

/// `GET /v1/rides` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RidesQuery {
    /// Only rides in this status.
    pub status: Option<String>,
    /// Only this driver's.
    pub driver_id: Option<Uuid>,
    /// Only this passenger's.
    pub passenger_id: Option<Uuid>,
    /// Created at or after (RFC 3339).
    pub from: Option<DateTime<Utc>>,
    /// Created before (RFC 3339).
    pub to: Option<DateTime<Utc>>,
    /// Page size, 1..=500 (50).
    pub limit: Option<i64>,
    /// From the previous page's `next_cursor`.
    pub cursor: Option<String>,
}

const RIDE_STATUSES: [&str; 5] = ["PENDING", "IN_PROGRESS", "ARRIVED", "COMPLETED", "CANCELLED"];

/// Analysts: rides by status, participant and creation time, newest first.
#[utoipa::path(get, path = "/v1/rides", tag = "analytics", security(("bearer" = [])), params(RidesQuery),
    responses((status = 200, body = RidePage), (status = 401, body = ErrorResponse), (status = 403, body = ErrorResponse), (status = 422, body = ErrorResponse)))]
pub async fn rides(
    State(state): State<AppState>,
    _analyst: Analyst,
    ApiQuery(query): ApiQuery<RidesQuery>,
) -> Result<Json<RidePage>, ApiError> {
    let limits = state.config().analyst;
    let limit = limits.page(query.limit, DEFAULT_LIMIT)?;
    limits.range(query.from, query.to, state.clock().now())?;
    let status = query.status.map(|s| s.to_ascii_uppercase());
    if let Some(status) = &status {
        if !RIDE_STATUSES.contains(&status.as_str()) {
            return Err(ApiError::validation(format!(
                "status must be one of {}",
                RIDE_STATUSES.join(", ")
            )));
        }
    }
    let (before_at, before_id) = parse_cursor(query.cursor.as_deref())?;
    let sql = rides_sql();
    let rows: Vec<RideRow> = {
        let mut tx = bounded(&state).await?;
        let rows = sqlx::query_as(&sql)
            .bind(status)
            .bind(query.driver_id)
            .bind(query.passenger_id)
            .bind(query.from)
            .bind(query.to)
            .bind(before_at)
            .bind(before_id)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await
            .map_err(cancelled(&state))?;
        tx.commit().await?;
        rows
    };
    Ok(Json(page(rows, limit)))
}

/// A row of `billing_ledger`.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct LedgerRow {
    /// The entry (derived from ride, kind, ordinal).
    pub entry_id: Uuid,
    /// Its ride.
    pub ride_id: Uuid,
    /// `trip_segment`, `minimum_fare`, `maximum_fare` or `driver_discount`.
    pub kind: String,
    /// The segment's length (trip segments only).
    pub distance_km: Option<f64>,
    /// Signed rupiah added to the price.
    pub cost: i64,
    /// The event that booked it.
    pub position: i64,
    /// When that event was recorded.
    pub recorded_at: DateTime<Utc>,
}

/// `GET /v1/billing/ledger` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LedgerQuery {
    /// Only this ride's entries.
    pub ride_id: Option<Uuid>,
    /// Recorded at or after.
    pub from: Option<DateTime<Utc>>,
    /// Recorded before.
    pub to: Option<DateTime<Utc>>,
    /// At most this many (500), in feed order.
    pub limit: Option<i64>,
}

/// The billing ledger.
#[derive(Debug, Serialize, ToSchema)]
pub struct Ledger {
    /// In feed order.
    pub entries: Vec<LedgerRow>,
    /// The sum of `cost` over `entries`.
    pub total: i64,
}

/// Analysts: ledger entries by ride and time, in feed order.
#[utoipa::path(get, path = "/v1/billing/ledger", tag = "analytics", security(("bearer" = [])), params(LedgerQuery),
    responses((status = 200, body = Ledger), (status = 401, body = ErrorResponse), (status = 403, body = ErrorResponse), (status = 422, body = ErrorResponse)))]
pub async fn ledger(
    State(state): State<AppState>,
    _analyst: Analyst,
    ApiQuery(query): ApiQuery<LedgerQuery>,
) -> Result<Json<Ledger>, ApiError> {
    let limits = state.config().analyst;
    let limit = limits.page(query.limit, MAX_LIMIT)?;
    limits.range(query.from, query.to, state.clock().now())?;
    let entries: Vec<LedgerRow> = {
        let mut tx = bounded(&state).await?;
        let rows = sqlx::query_as(LEDGER_SQL)
            .bind(query.ride_id)
            .bind(query.from)
            .bind(query.to)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await
            .map_err(cancelled(&state))?;
        tx.commit().await?;
        rows
    };
    let total = entries.iter().map(|e| e.cost).sum();
    Ok(Json(Ledger { entries, total }))
}

/// A row of `payments`.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct PaymentRow {
    /// The payment (one per ride).
    pub payment_id: Uuid,
    /// Its ride.
    pub ride_id: Uuid,
    /// What the passenger pays.
    pub adjusted_cost: i64,
    /// The platform's share.
    pub admin_fee: i64,
    /// The driver's share.
    pub driver_payout: i64,
    /// `PENDING`, `DECLINED`, `FAILED` or `ACCEPTED`.
    pub status: String,
    /// Charge attempts so far.
    pub attempts: i32,
    /// The provider's reference once accepted.
    pub provider_ref: Option<String>,
    /// Created (at arrival).
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

/// `GET /v1/payments` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PaymentsQuery {
    /// Only payments in this status.
    pub status: Option<String>,
    /// Only this ride's.
    pub ride_id: Option<Uuid>,
    /// Created at or after.
    pub from: Option<DateTime<Utc>>,
    /// Created before.
    pub to: Option<DateTime<Utc>>,
    /// At most this many (50), newest first.
    pub limit: Option<i64>,
}

/// Payments.
#[derive(Debug, Serialize, ToSchema)]
pub struct Payments {
    /// Newest first.
    pub payments: Vec<PaymentRow>,
}

/// Analysts: payments by status, ride and time.
#[utoipa::path(get, path = "/v1/payments", tag = "analytics", security(("bearer" = [])), params(PaymentsQuery),
    responses((status = 200, body = Payments), (status = 401, body = ErrorResponse), (status = 403, body = ErrorResponse), (status = 422, body = ErrorResponse)))]
pub async fn payments(
    State(state): State<AppState>,
    _analyst: Analyst,
    ApiQuery(query): ApiQuery<PaymentsQuery>,
) -> Result<Json<Payments>, ApiError> {
    let limits = state.config().analyst;
    let limit = limits.page(query.limit, DEFAULT_LIMIT)?;
    limits.range(query.from, query.to, state.clock().now())?;
    let status = query.status.map(|s| s.to_ascii_uppercase());
    let payments: Vec<PaymentRow> = {
        let mut tx = bounded(&state).await?;
        let rows = sqlx::query_as(PAYMENTS_SQL)
            .bind(status)
            .bind(query.ride_id)
            .bind(query.from)
            .bind(query.to)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await
            .map_err(cancelled(&state))?;
        tx.commit().await?;
        rows
    };
    Ok(Json(Payments { payments }))
}

/// A revenue bucket's width.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Bucket {
    /// One hour.
    Hour,
    /// One day (UTC).
    Day,
}

/// `GET /v1/analytics/revenue` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RevenueQuery {
    /// Completed at or after (default: `to` minus 7 days).
    pub from: Option<DateTime<Utc>>,
    /// Completed before (default: now).
    pub to: Option<DateTime<Utc>>,
    /// `hour` or `day` (default `day`).
    #[param(inline)]
    pub bucket: Option<Bucket>,
}

/// One bucket of completed rides (a row of the SQL function `analytics_revenue`, see
/// `docs/read-models.md`).
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct RevenueBucket {
    /// The bucket's start (UTC).
    pub bucket_start: DateTime<Utc>,
    /// Rides completed in it.
    pub rides: i64,
    /// What passengers paid (adjusted fares).
    pub revenue: i64,
    /// The platform's admin fees.
    pub admin_fees: i64,
    /// What drivers earned.
    pub driver_payouts: i64,
    /// Billed kilometres.
    pub distance_km: f64,
}

/// Revenue over time.
#[derive(Debug, Serialize, ToSchema)]
pub struct Revenue {
    /// From.
    pub from: DateTime<Utc>,
    /// To.
    pub to: DateTime<Utc>,
    /// `hour` or `day`.
    pub bucket: String,
    /// Buckets with at least one completed ride, in time order.
    pub buckets: Vec<RevenueBucket>,
}

/// Analysts: completed rides' money per hour or day.
#[utoipa::path(get, path = "/v1/analytics/revenue", tag = "analytics", security(("bearer" = [])), params(RevenueQuery),
    responses((status = 200, body = Revenue), (status = 401, body = ErrorResponse), (status = 403, body = ErrorResponse), (status = 422, body = ErrorResponse)))]
pub async fn revenue(
    State(state): State<AppState>,
    _analyst: Analyst,
    ApiQuery(query): ApiQuery<RevenueQuery>,
) -> Result<Json<Revenue>, ApiError> {
    let to = query.to.unwrap_or_else(|| state.clock().now());
    let from = query.from.unwrap_or(to - TimeDelta::days(7));
    state.config().analyst.range(Some(from), Some(to), to)?;
    let bucket = match query.bucket.unwrap_or(Bucket::Day) {
        Bucket::Hour => "hour",
        Bucket::Day => "day",
    };
    let buckets: Vec<RevenueBucket> = {
        let mut tx = bounded(&state).await?;
        let rows = sqlx::query_as(REVENUE_SQL)
            .bind(bucket)
            .bind(from)
            .bind(to)
            .fetch_all(&mut *tx)
            .await
            .map_err(cancelled(&state))?;
        tx.commit().await?;
        rows
    };
    Ok(Json(Revenue {
        from,
        to,
        bucket: bucket.into(),
        buckets,
    }))
}

/// `GET /v1/drivers/nearby` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct NearbyQuery {
    /// Latitude of the point.
    pub lat: f64,
    /// Longitude of the point.
    pub lon: f64,
    /// Radius in km, in (0, 100] (default 5).
    pub radius_km: Option<f64>,
    /// At most this many, nearest first (default 50, at most 500).
    pub limit: Option<usize>,
}

/// One available driver.
#[derive(Debug, Serialize, ToSchema)]
pub struct NearbyDriver {
    /// The driver.
    pub driver_id: uuid::Uuid,
    /// Where (last ping).
    pub lat: f64,
    /// Where (last ping).
    pub lon: f64,
    /// From the point, km.
    pub distance_km: f64,
}

/// The available drivers near a point.
#[derive(Debug, Serialize, ToSchema)]
pub struct Nearby {
    /// Nearest first.
    pub drivers: Vec<NearbyDriver>,
}

/// Analysts: the available drivers (online, fresh, not in a match or ride) near a
/// point, nearest first, from the Redis geo index.
#[utoipa::path(get, path = "/v1/drivers/nearby", tag = "analytics", security(("bearer" = [])), params(NearbyQuery),
    responses((status = 200, body = Nearby), (status = 401, body = ErrorResponse), (status = 403, body = ErrorResponse), (status = 422, body = ErrorResponse)))]
pub async fn nearby(
    State(state): State<AppState>,
    _analyst: Analyst,
    ApiQuery(query): ApiQuery<NearbyQuery>,
) -> Result<Json<Nearby>, ApiError> {
    let Some(geo) = state.geo() else {
        return Err(ApiError::not_found("this process has no geo index"));
    };
    let limit = query.limit.unwrap_or(50).clamp(1, 500);
    let point = domain::GeoPoint::new(query.lat, query.lon).map_err(ApiError::Domain)?;
    state
        .config()
        .policy
        .service_area
        .check(&point, "the point")
        .map_err(ApiError::Domain)?;
    let found = geo
        .nearby(query.lat, query.lon, query.radius_km.unwrap_or(5.0), limit)
        .await
        .map_err(|e| match e {
            projections::geo::GeoError::InvalidQuery(message) => ApiError::validation(message),
            projections::geo::GeoError::Redis(e) => ApiError::Redis(e),
            projections::geo::GeoError::Postgres(e) => ApiError::Database(e),
            other => ApiError::Redis(redis::RedisError::from(std::io::Error::other(other.to_string()))),
        })?;
    Ok(Json(Nearby {
        drivers: found
            .into_iter()
            .map(|d| NearbyDriver {
                driver_id: d.driver_id.as_uuid(),
                lat: d.lat,
                lon: d.lon,
                distance_km: d.distance_km,
            })
            .collect(),
    }))
}
