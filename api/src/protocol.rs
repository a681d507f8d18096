//! The wire protocol as types: every WebSocket frame a client sends, every frame the
//! server answers or pushes, the NATS command envelope and reply, the event envelope
//! on JetStream `EVENTS` and the driver ping on `LOCATION` — each a Rust type deriving
//! [`JsonSchema`], from which [`asyncapi`] builds the AsyncAPI 3 document committed as
//! `docs/asyncapi.json` (`nebengjek asyncapi` prints it; prose in `docs/protocol.md`).
//!
//! The session loop and the pushes build their frames as JSON; these types are the
//! contract those frames are held to. `api/tests/asyncapi.rs` keeps the committed
//! document equal to the generated one, and the test clients of `api/tests` and
//! `nebengjek/tests` validate every frame they receive, and every frame they send that
//! the server accepts, against [`server_frame_schema`] / [`client_frame_schema`].
//!
//! Schemas are JSON Schema draft 07 (AsyncAPI's default schema format), inlined: each
//! message's schema stands alone.

use chrono::{DateTime, Utc};
use schemars::generate::SchemaSettings;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use uuid::Uuid;

/// A position.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
pub struct Point {
    /// Latitude, degrees (the service area is narrower: `outside_service_area`).
    #[schemars(range(min = -90.0, max = 90.0))]
    pub lat: f64,
    /// Longitude, degrees.
    #[schemars(range(min = -180.0, max = 180.0))]
    pub lon: f64,
}

/// A frame id: with the user's id, the command's idempotency key.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum FrameId {
    /// 1 to 128 characters.
    Text(#[schemars(length(min = 1, max = 128))] String),
    /// A number.
    Number(f64),
}

// ---- client → server -------------------------------------------------------------

/// `beacon_update` (drivers): online or offline, and where.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct BeaconUpdate {
    /// Accepting proposals.
    pub is_active: bool,
    /// Latitude.
    #[schemars(range(min = -90.0, max = 90.0))]
    pub lat: f64,
    /// Longitude.
    #[schemars(range(min = -180.0, max = 180.0))]
    pub lon: f64,
}

/// `location_update` (drivers; passengers too while waiting). During a ride in
/// progress, a driver's point is a trip point: recorded before the ack.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct LocationUpdate {
    /// Latitude.
    #[schemars(range(min = -90.0, max = 90.0))]
    pub lat: f64,
    /// Longitude.
    #[schemars(range(min = -180.0, max = 180.0))]
    pub lon: f64,
    /// Reported accuracy, metres.
    #[serde(default)]
    pub accuracy_m: Option<f64>,
    /// When the device took the fix; at most 5 s ahead of the server's clock.
    #[serde(default)]
    pub recorded_at: Option<DateTime<Utc>>,
}

/// `finder_update` (passengers): `is_active: true` with pickup and destination asks
/// for a ride; `is_active: false` cancels the open match.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct FinderUpdate {
    /// Ask (true) or give up (false).
    pub is_active: bool,
    /// Where to be picked up (required when asking).
    #[serde(default)]
    pub pickup: Option<Point>,
    /// Where to go (required when asking).
    #[serde(default)]
    pub destination: Option<Point>,
}

/// `match_confirm`: a candidate driver accepts or declines a proposal; the passenger
/// confirms or declines the driver who accepted.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct MatchConfirm {
    /// The match.
    pub match_id: Uuid,
    /// Yes or no.
    pub accepted: bool,
}

/// `ride_start` (the ride's driver, within 100 m of the passenger).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RideStart {
    /// The ride.
    pub ride_id: Uuid,
}

/// A factor in (0, 1] with at most 4 decimals, as a number or a decimal string.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Factor {
    /// `0.8`.
    Number(#[schemars(range(min = 0.0001, max = 1.0))] f64),
    /// `"0.8"`.
    Text(#[schemars(regex(pattern = r"^(0(\.\d{1,4})?|1(\.0{1,4})?)$"))] String),
}

/// `ride_arrived` (the ride's driver): fixes the fare.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RideArrived {
    /// The ride.
    pub ride_id: Uuid,
    /// The driver's discount; default 1.
    #[serde(default)]
    pub adjustment_factor: Option<Factor>,
}

/// `payment_process` (the ride's passenger).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct PaymentProcess {
    /// The ride.
    pub ride_id: Uuid,
    /// Rupiah: exactly the amount of the `payment_request`.
    #[schemars(range(min = 1))]
    pub amount: i64,
    /// False: the passenger declines to pay now (the ride stays payable).
    pub accepted: bool,
}

/// `ride_cancel` (either participant of a `PENDING` ride).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RideCancel {
    /// The ride.
    pub ride_id: Uuid,
    /// Why; required.
    pub reason: String,
}

// ---- server → client: acks and errors ----------------------------------------------

/// Every stable error code, in the order they are checked (`docs/protocol.md`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidPayload,
    ValidationFailed,
    UnknownType,
    NotFound,
    Forbidden,
    InvalidTransition,
    AlreadyActive,
    TooFar,
    OutsideServiceArea,
    AlreadyTaken,
    AmountMismatch,
    PaymentFailed,
    PlateTaken,
    RateLimited,
    Conflict,
    Unauthorized,
    Internal,
}

/// Why a command was refused.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct WireError {
    /// The stable code.
    pub code: ErrorCode,
    /// For people.
    pub message: String,
}

/// Match statuses.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MatchStatus {
    Searching,
    Proposed,
    DriverAccepted,
    Confirmed,
    Cancelled,
    Expired,
    Failed,
}

/// Ride statuses.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RideStatus {
    Pending,
    InProgress,
    Arrived,
    Completed,
    Cancelled,
}

/// Payment statuses.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PaymentStatus {
    Pending,
    Declined,
    Failed,
    Accepted,
}

/// What an accepted command produced.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum AckResult {
    /// `finder_update`.
    Match {
        /// The match asked for.
        match_id: Uuid,
    },
    /// `match_confirm`, `ride_*`, `payment_process`.
    Aggregate {
        /// The match or ride.
        aggregate_id: Uuid,
        /// Its version after the command.
        version: i64,
        /// Its status after the command.
        status: String,
    },
    /// A trip point refused as too fast or not after the last one (still acked ok).
    Rejected {
        /// `too_fast` or `not_after_previous`.
        rejected: String,
    },
    /// `beacon_update`, `location_update`.
    Empty {},
}

// ---- server → client: pushes -----------------------------------------------------

/// A match as `session_state` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct MatchView {
    pub match_id: Uuid,
    pub status: MatchStatus,
    pub passenger_id: Option<Uuid>,
    pub pickup: Point,
    pub destination: Point,
    /// The matching round, from 1.
    pub round: u32,
    pub fare_estimate: i64,
    /// The ride, once confirmed.
    pub ride_id: Option<Uuid>,
    /// The accepted driver (or, for a driver's pending proposal, absent).
    #[serde(default)]
    pub driver_id: Option<Uuid>,
    /// From the driver to the pickup.
    #[serde(default)]
    pub distance_km: Option<f64>,
    #[serde(default)]
    pub eta_seconds: Option<u32>,
    #[serde(default)]
    pub vehicle_type: Option<String>,
    #[serde(default)]
    pub vehicle_plate: Option<String>,
}

/// A ride's payment as `session_state` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct PaymentView {
    pub payment_id: Option<Uuid>,
    pub ride_id: Uuid,
    pub adjusted_cost: i64,
    pub admin_fee: i64,
    pub driver_payout: i64,
    pub status: Option<PaymentStatus>,
    /// Charges tried so far.
    pub attempts: u32,
}

/// A ride as `session_state` shows it; the fare fields once it arrived.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RideView {
    pub ride_id: Uuid,
    pub match_id: Option<Uuid>,
    pub driver_id: Option<Uuid>,
    pub passenger_id: Option<Uuid>,
    pub pickup: Option<Point>,
    pub destination: Option<Point>,
    pub status: Option<RideStatus>,
    pub created_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub distance_km: f64,
    #[serde(default)]
    pub fare: Option<i64>,
    #[serde(default)]
    pub adjustment_factor: Option<f64>,
    /// What to pay.
    #[serde(default)]
    pub amount: Option<i64>,
    #[serde(default)]
    pub admin_fee: Option<i64>,
    #[serde(default)]
    pub driver_payout: Option<i64>,
    #[serde(default)]
    pub payment: Option<PaymentView>,
}

/// `session_state`: sent first on every connect.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct SessionState {
    /// The open match, or null.
    #[serde(rename = "match")]
    pub open_match: Option<MatchView>,
    /// The open ride, or null.
    #[serde(rename = "ride")]
    pub open_ride: Option<RideView>,
}

/// `match_proposal` (to each candidate driver).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct MatchProposal {
    pub match_id: Uuid,
    pub passenger_id: Option<Uuid>,
    pub pickup: Point,
    pub destination: Point,
    /// From this driver to the pickup.
    pub distance_km: f64,
    pub eta_seconds: u32,
    /// The straight line pickup → destination priced like a fare.
    pub fare_estimate: i64,
}

/// `match_withdrawn` (another driver won, the passenger gave up or turned this driver
/// down, or the round timed out) and `match_expired`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct MatchRef {
    pub match_id: Uuid,
}

/// `match_accepted` (to the passenger: please confirm).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct MatchAccepted {
    pub match_id: Uuid,
    pub driver_id: Uuid,
    pub vehicle_type: Option<String>,
    pub vehicle_plate: Option<String>,
    pub distance_km: f64,
    pub eta_seconds: u32,
}

/// `match_confirmed` (both).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct MatchConfirmed {
    pub match_id: Uuid,
    pub ride_id: Uuid,
}

/// Why matching failed.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    NoDriver,
    AllDeclined,
}

/// `match_failed` (to the passenger).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct MatchFailed {
    pub match_id: Uuid,
    pub reason: FailureReason,
}

/// `ride_pickup` (both, when the ride is created).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RidePickup {
    pub ride_id: Uuid,
    pub match_id: Uuid,
    pub driver_id: Uuid,
    pub passenger_id: Uuid,
    pub pickup: Point,
    pub destination: Point,
    pub status: RideStatus,
}

/// `ride_started` (both).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RideStarted {
    pub ride_id: Uuid,
    pub started_at: DateTime<Utc>,
}

/// Who cancelled.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CancelledBy {
    Driver,
    Passenger,
}

/// `ride_cancelled` (both).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RideCancelled {
    pub ride_id: Uuid,
    pub by: CancelledBy,
    pub reason: String,
}

/// `payment_request` (to the passenger).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct PaymentRequest {
    pub ride_id: Uuid,
    pub payment_id: Uuid,
    pub distance_km: f64,
    pub fare: i64,
    pub adjustment_factor: f64,
    /// The adjusted fare: what to pay.
    pub amount: i64,
    pub admin_fee: i64,
    pub driver_payout: i64,
}

/// The ride of a `ride_completed`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct CompletedRide {
    pub ride_id: Uuid,
    pub status: RideStatus,
    pub driver_id: Uuid,
    pub passenger_id: Uuid,
    pub distance_km: f64,
    pub fare: i64,
    pub adjusted_fare: i64,
    pub admin_fee: i64,
    pub driver_payout: i64,
    pub completed_at: DateTime<Utc>,
}

/// The payment of a `ride_completed`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct CompletedPayment {
    pub payment_id: Uuid,
    pub ride_id: Uuid,
    pub adjusted_cost: i64,
    pub admin_fee: i64,
    pub driver_payout: i64,
    pub status: PaymentStatus,
}

/// `ride_completed` (both).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RideCompleted {
    pub ride: CompletedRide,
    pub payment: CompletedPayment,
}

// ---- NATS ------------------------------------------------------------------------

/// A NATS command request body. The actor comes from the `Authorization: Bearer <jwt>`
/// header.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct NatsCommand {
    /// With the user's id, the idempotency key.
    #[schemars(length(min = 1, max = 128))]
    pub command_id: String,
    /// The command's fields, as in the WebSocket frame's `data`.
    pub data: Map<String, Value>,
}

/// A NATS command request's headers.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct NatsCommandHeaders {
    /// `Bearer <jwt>`: the user's token from `POST /v1/auth/token`.
    #[serde(rename = "Authorization")]
    #[schemars(regex(pattern = r"^Bearer \S+$"))]
    pub authorization: String,
}

/// A NATS command reply: the ack without `type` and `id`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct NatsReply {
    /// Accepted or refused.
    pub ok: bool,
    /// When accepted.
    #[serde(default)]
    pub result: Option<AckResult>,
    /// When refused.
    #[serde(default)]
    pub error: Option<WireError>,
}

/// One event on JetStream `EVENTS` (subject `events.<aggregate>.<event>`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct EventEnvelope {
    /// Also the message's `Nats-Msg-Id`.
    pub event_id: Uuid,
    /// Global, dense, in commit order.
    pub position: i64,
    /// `match`, `ride`, ...
    pub aggregate_type: String,
    pub aggregate_id: Uuid,
    /// 1, 2, 3 ... within the aggregate.
    pub sequence: i64,
    /// snake_case: `started`, `confirmed`, ...
    pub event_type: String,
    pub event_version: i32,
    /// The event's fields.
    pub payload: Map<String, Value>,
    /// `event_id`, `command_id`, `correlation_id`, `causation_id`, `actor`, `recorded_at`.
    pub metadata: Map<String, Value>,
}

/// The headers of an `EVENTS` message.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct EventHeaders {
    /// The event id: JetStream drops a repeat within its duplicate window.
    #[serde(rename = "Nats-Msg-Id")]
    pub nats_msg_id: Uuid,
    /// The event store's identity.
    #[serde(rename = "Nebengjek-Store-Id")]
    pub store_id: Uuid,
    /// The event's position.
    #[serde(rename = "Nebengjek-Position")]
    pub position: String,
}

/// A driver's ping on JetStream `LOCATION` (subject `location.driver.<driver_id>`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct LocationPing {
    pub driver_id: Uuid,
    pub point: Point,
    /// Online or offline now; absent leaves it as it was.
    #[serde(default)]
    pub is_active: Option<bool>,
    /// When the server received it (or the client's `recorded_at`).
    pub at: DateTime<Utc>,
}

// ---- schemas ---------------------------------------------------------------------

/// The inlined draft-07 schema of `T`.
fn schema<T: JsonSchema>() -> Value {
    let mut generator = SchemaSettings::draft07()
        .with(|s| s.inline_subschemas = true)
        .into_generator();
    let mut schema = serde_json::to_value(generator.subschema_for::<T>()).unwrap_or(Value::Bool(true));
    uuid_patterns(&mut schema);
    schema
}

/// Draft 07 has no `uuid` format (2019-09 added it), so validators ignore it: every
/// `format: uuid` also gets the pattern of a hyphenated UUID.
fn uuid_patterns(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if map.get("format").and_then(Value::as_str) == Some("uuid") {
                map.insert("pattern".into(), Value::String(UUID_PATTERN.into()));
            }
            map.values_mut().for_each(uuid_patterns);
        }
        Value::Array(items) => items.iter_mut().for_each(uuid_patterns),
        _ => {}
    }
}

/// A hyphenated UUID, either case.
const UUID_PATTERN: &str = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";

/// The client frame types with their `data` schemas, in `docs/protocol.md`'s order.
fn client_frames() -> Vec<(&'static str, Value)> {
    vec![
        ("beacon_update", schema::<BeaconUpdate>()),
        ("location_update", schema::<LocationUpdate>()),
        ("finder_update", schema::<FinderUpdate>()),
        ("match_confirm", schema::<MatchConfirm>()),
        ("ride_start", schema::<RideStart>()),
        ("ride_arrived", schema::<RideArrived>()),
        ("payment_process", schema::<PaymentProcess>()),
        ("ride_cancel", schema::<RideCancel>()),
    ]
}

/// The push types with their `data` schemas.
fn pushes() -> Vec<(&'static str, Value)> {
    vec![
        ("session_state", schema::<SessionState>()),
        ("match_proposal", schema::<MatchProposal>()),
        ("match_withdrawn", schema::<MatchRef>()),
        ("match_accepted", schema::<MatchAccepted>()),
        ("match_confirmed", schema::<MatchConfirmed>()),
        ("match_failed", schema::<MatchFailed>()),
        ("match_expired", schema::<MatchRef>()),
        ("ride_pickup", schema::<RidePickup>()),
        ("ride_started", schema::<RideStarted>()),
        ("ride_cancelled", schema::<RideCancelled>()),
        ("payment_request", schema::<PaymentRequest>()),
        ("ride_completed", schema::<RideCompleted>()),
    ]
}

fn object(required: &[&str], properties: Value) -> Value {
    json!({ "type": "object", "required": required, "properties": properties })
}

/// The schema of a client frame of type `kind`, if it is a command.
pub fn client_frame_schema(kind: &str) -> Option<Value> {
    client_frames()
        .into_iter()
        .find(|(k, _)| *k == kind)
        .map(|(kind, data)| {
            object(
                &["type", "id", "data"],
                json!({ "type": { "const": kind }, "id": schema::<FrameId>(), "data": data }),
            )
        })
}

fn ack_ok_schema() -> Value {
    object(
        &["type", "id", "ok", "result"],
        json!({
            "type": { "const": "ack" },
            "id": schema::<FrameId>(),
            "ok": { "const": true },
            "result": schema::<AckResult>(),
        }),
    )
}

fn ack_refused_schema() -> Value {
    object(
        &["type", "id", "ok", "error"],
        json!({
            "type": { "const": "ack" },
            "id": schema::<FrameId>(),
            "ok": { "const": false },
            "error": schema::<WireError>(),
        }),
    )
}

fn error_frame_schema() -> Value {
    let mut error = schema::<WireError>();
    error["properties"]["code"] = json!({ "const": "invalid_payload" });
    object(
        &["type", "error"],
        json!({ "type": { "const": "error" }, "id": schema::<FrameId>(), "error": error }),
    )
}

fn push_schema(kind: &str, data: Value) -> Value {
    let mut push = object(
        &["type", "data"],
        json!({ "type": { "const": kind }, "data": data }),
    );
    push["not"] = json!({ "required": ["id"] });
    push
}

/// The message name and schema a frame from the server must satisfy, chosen by its
/// `type` (and `ok` for acks); `None` for a type the protocol does not have.
pub fn server_frame_schema(frame: &Value) -> Option<(String, Value)> {
    match frame.get("type").and_then(Value::as_str)? {
        "ack" if frame.get("ok") == Some(&Value::Bool(false)) => {
            Some(("ack_refused".into(), ack_refused_schema()))
        }
        "ack" => Some(("ack_ok".into(), ack_ok_schema())),
        "error" => Some(("error".into(), error_frame_schema())),
        kind => pushes()
            .into_iter()
            .find(|(k, _)| *k == kind)
            .map(|(k, data)| (k.to_owned(), push_schema(k, data))),
    }
}

/// NATS subjects and the WebSocket command each carries.
pub const NATS_COMMANDS: [(&str, &str, &str); 9] = [
    (
        "cmd.match.request",
        "finder_update",
        "finder_update with is_active: true (pickup, destination)",
    ),
    (
        "cmd.match.cancel",
        "finder_update",
        "finder_update with is_active: false",
    ),
    ("cmd.match.confirm", "match_confirm", "match_confirm"),
    ("cmd.ride.start", "ride_start", "ride_start"),
    (
        "cmd.ride.location",
        "location_update",
        "a trip point (location_update, optionally with ride_id)",
    ),
    ("cmd.ride.arrive", "ride_arrived", "ride_arrived"),
    ("cmd.ride.pay", "payment_process", "payment_process"),
    ("cmd.ride.cancel", "ride_cancel", "ride_cancel"),
    ("cmd.driver.beacon", "beacon_update", "beacon_update"),
];

fn message_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/messages/{name}") })
}

/// The AsyncAPI 3.0 document of the WebSocket `/ws`, the NATS command subjects and
/// the JetStream feeds.
pub fn asyncapi() -> Value {
    let mut schemas = Map::new();
    let mut messages = Map::new();
    let mut add = |name: &str, title: String, summary: &str, payload: Value, headers: Option<Value>| {
        let key = name.to_owned();
        schemas.insert(key.clone(), payload);
        let mut message = json!({
            "name": name,
            "title": title,
            "summary": summary,
            "contentType": "application/json",
            "payload": { "$ref": format!("#/components/schemas/{key}") },
        });
        if let Some(headers) = headers {
            message["headers"] = headers;
        }
        messages.insert(key, message);
    };
    let mut ws_in = Vec::new();
    for (kind, _) in client_frames() {
        let frame = client_frame_schema(kind).unwrap_or(Value::Bool(true));
        add(
            kind,
            format!("{kind} (client → server)"),
            "A command frame; answered by exactly one ack.",
            frame,
            None,
        );
        ws_in.push(kind.to_owned());
    }
    add(
        "ack_ok",
        "ack, accepted".into(),
        "The answer to a command frame that was accepted.",
        ack_ok_schema(),
        None,
    );
    add(
        "ack_refused",
        "ack, refused".into(),
        "The answer to a command frame that was refused; nothing was written.",
        ack_refused_schema(),
        None,
    );
    add(
        "error",
        "error".into(),
        "The answer to what is not a frame (not JSON, no id, no type); the socket stays open.",
        error_frame_schema(),
        None,
    );
    let mut ws_out = vec!["ack_ok".to_owned(), "ack_refused".to_owned(), "error".to_owned()];
    for (kind, data) in pushes() {
        add(
            kind,
            format!("{kind} (push)"),
            "A push: no id.",
            push_schema(kind, data),
            None,
        );
        ws_out.push(kind.to_owned());
    }
    let auth_headers = schema::<NatsCommandHeaders>();
    for (subject, kind, what) in NATS_COMMANDS {
        let mut envelope = schema::<NatsCommand>();
        if let Some(data) = client_frames()
            .into_iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, d)| d)
        {
            envelope["properties"]["data"] = data;
        }
        if subject == "cmd.match.request" || subject == "cmd.match.cancel" {
            // The subject says whether the passenger asks or gives up.
            if let Some(data) = envelope["properties"]["data"].as_object_mut() {
                if let Some(props) = data.get_mut("properties").and_then(Value::as_object_mut) {
                    props.remove("is_active");
                }
                if let Some(required) = data.get_mut("required").and_then(Value::as_array_mut) {
                    required.retain(|r| r != "is_active");
                }
            }
        }
        add(
            subject,
            format!("{subject} request"),
            what,
            envelope,
            Some(auth_headers.clone()),
        );
    }
    add(
        "nats_reply",
        "command reply".into(),
        "The reply to every NATS command: {ok, result} or {ok, error}.",
        schema::<NatsReply>(),
        None,
    );
    add(
        "event",
        "event envelope".into(),
        "One event of the store, published in position order, each once.",
        schema::<EventEnvelope>(),
        Some(schema::<EventHeaders>()),
    );
    add(
        "location_ping",
        "driver ping".into(),
        "A driver's accepted beacon_update or location_update.",
        schema::<LocationPing>(),
        None,
    );

    let refs = |names: &[String]| -> Map<String, Value> {
        names.iter().map(|n| (n.clone(), message_ref(n))).collect()
    };
    let mut channels = Map::new();
    let mut ws_messages = refs(&ws_in);
    ws_messages.extend(refs(&ws_out));
    channels.insert(
        "ws".into(),
        json!({
            "address": "/ws",
            "title": "WebSocket",
            "description": "One socket per app. Auth: Authorization: Bearer <jwt> or ?token= (401 at the upgrade otherwise). session_state comes first; close codes 1001, 1008, 1009, 1011, 4001, 4002, 4003 (docs/protocol.md).",
            "messages": ws_messages,
        }),
    );
    let channel_refs = |names: &[&str]| -> Vec<Value> {
        names
            .iter()
            .map(|n| json!({ "$ref": format!("#/channels/ws/messages/{n}") }))
            .collect()
    };
    let answers = channel_refs(&["ack_ok", "ack_refused", "error"]);
    let mut operations = Map::new();
    operations.insert(
        "receiveCommand".into(),
        json!({
            "action": "receive",
            "title": "A client sends a command frame",
            "channel": { "$ref": "#/channels/ws" },
            "messages": ws_in.iter().map(|n| json!({ "$ref": format!("#/channels/ws/messages/{n}") })).collect::<Vec<_>>(),
            "reply": {
                "channel": { "$ref": "#/channels/ws" },
                "messages": answers,
            },
        }),
    );
    operations.insert(
        "sendPush".into(),
        json!({
            "action": "send",
            "title": "The server pushes to a user's sockets",
            "channel": { "$ref": "#/channels/ws" },
            "messages": ws_out.iter().skip(3).map(|n| json!({ "$ref": format!("#/channels/ws/messages/{n}") })).collect::<Vec<_>>(),
        }),
    );
    channels.insert(
        "nats_reply".into(),
        json!({
            "address": null,
            "title": "NATS reply inbox",
            "messages": { "nats_reply": message_ref("nats_reply") },
        }),
    );
    for (subject, _, what) in NATS_COMMANDS {
        let id = subject.replace('.', "_");
        channels.insert(
            id.clone(),
            json!({
                "address": subject,
                "title": subject,
                "description": format!("{what}. Request/reply, queue group nebengjek-commands; COMMAND_SUBJECT_PREFIX goes before the subject."),
                "messages": { subject: message_ref(subject) },
            }),
        );
        operations.insert(
            format!("serve_{id}"),
            json!({
                "action": "receive",
                "channel": { "$ref": format!("#/channels/{id}") },
                "messages": [{ "$ref": format!("#/channels/{id}/messages/{subject}") }],
                "reply": {
                    "channel": { "$ref": "#/channels/nats_reply" },
                    "messages": [{ "$ref": "#/channels/nats_reply/messages/nats_reply" }],
                },
            }),
        );
    }
    channels.insert(
        "events".into(),
        json!({
            "address": "events.{aggregate}.{event}",
            "title": "JetStream EVENTS",
            "parameters": {
                "aggregate": { "description": "match, ride, ..." },
                "event": { "description": "The event's snake_case name: requested, confirmed, created, started, arrived, completed, ..." },
            },
            "messages": { "event": message_ref("event") },
        }),
    );
    operations.insert(
        "publishEvent".into(),
        json!({
            "action": "send",
            "channel": { "$ref": "#/channels/events" },
            "messages": [{ "$ref": "#/channels/events/messages/event" }],
        }),
    );
    channels.insert(
        "location".into(),
        json!({
            "address": "location.driver.{driver_id}",
            "title": "JetStream LOCATION",
            "parameters": { "driver_id": { "description": "The driver's user id." } },
            "messages": { "location_ping": message_ref("location_ping") },
        }),
    );
    operations.insert(
        "publishPing".into(),
        json!({
            "action": "send",
            "channel": { "$ref": "#/channels/location" },
            "messages": [{ "$ref": "#/channels/location/messages/location_ping" }],
        }),
    );
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "NebengJek",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The WebSocket protocol of the passenger and driver apps, the NATS command subjects and the JetStream feeds. Prose: docs/protocol.md. Generated from api/src/protocol.rs by `nebengjek asyncapi`; do not edit by hand.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "edge": { "host": "127.0.0.1:8080", "protocol": "ws", "description": "HTTP_ADDR of a process with the api role" },
            "nats": { "host": "127.0.0.1:4222", "protocol": "nats", "description": "NATS_URL" },
        },
        "channels": channels,
        "operations": operations,
        "components": { "schemas": schemas, "messages": messages },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_type_and_every_push_has_a_schema() {
        for kind in commands::ingress::COMMAND_TYPES {
            assert!(client_frame_schema(kind).is_some(), "{kind}");
        }
        for kind in ["ack", "error", "session_state", "ride_completed"] {
            assert!(server_frame_schema(&json!({ "type": kind })).is_some(), "{kind}");
        }
        assert!(server_frame_schema(&json!({ "type": "no_such_push" })).is_none());
    }

    #[test]
    fn every_domain_error_code_is_in_the_schema() {
        let codes = schema::<ErrorCode>();
        let listed: Vec<String> = serde_json::from_value(codes["enum"].clone()).expect("an enum");
        for code in [
            domain::ErrorCode::InvalidPayload,
            domain::ErrorCode::ValidationFailed,
            domain::ErrorCode::UnknownType,
            domain::ErrorCode::NotFound,
            domain::ErrorCode::Forbidden,
            domain::ErrorCode::InvalidTransition,
            domain::ErrorCode::AlreadyActive,
            domain::ErrorCode::TooFar,
            domain::ErrorCode::OutsideServiceArea,
            domain::ErrorCode::AlreadyTaken,
            domain::ErrorCode::AmountMismatch,
            domain::ErrorCode::PaymentFailed,
            domain::ErrorCode::PlateTaken,
            domain::ErrorCode::RateLimited,
            domain::ErrorCode::Conflict,
            domain::ErrorCode::Internal,
        ] {
            assert!(listed.iter().any(|l| l == code.as_str()), "{code}");
        }
    }
}
