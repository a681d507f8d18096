//! Client commands as they arrive (a WebSocket frame's `type` and `data`, or a NATS
//! subject and envelope), parsed once into typed commands.
//!
//! Parsing is the first check of SPEC.md §3's order: a field that is missing or of the
//! wrong type, or a value out of range, is `validation_failed` here, before any
//! aggregate is looked at.

use chrono::{DateTime, Utc};
use domain::billing::AdjustmentFactor;
use domain::{Actor, DomainError, ErrorCode, GeoPoint, MatchId, RideId, Role, UserId};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

/// A command a passenger's or driver's app (or another service) can send.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientCommand {
    /// `finder_update {is_active: true, pickup, destination}`.
    RequestMatch {
        /// Where to be picked up.
        pickup: GeoPoint,
        /// Where to go.
        destination: GeoPoint,
    },
    /// `finder_update {is_active: false}`: cancel the open match.
    CancelMatch,
    /// `match_confirm {match_id, accepted}`.
    MatchConfirm {
        /// The match.
        match_id: MatchId,
        /// Yes or no.
        accepted: bool,
    },
    /// `ride_start {ride_id}`.
    RideStart {
        /// The ride.
        ride_id: RideId,
    },
    /// `ride_arrived {ride_id, adjustment_factor?}`.
    RideArrived {
        /// The ride.
        ride_id: RideId,
        /// The driver's discount factor.
        adjustment_factor: Option<AdjustmentFactor>,
    },
    /// `payment_process {ride_id, amount, accepted}`.
    PaymentProcess {
        /// The ride.
        ride_id: RideId,
        /// Rupiah, must be positive.
        amount: i64,
        /// False when the passenger declines to pay now.
        accepted: bool,
    },
    /// `ride_cancel {ride_id, reason}`.
    RideCancel {
        /// The ride.
        ride_id: RideId,
        /// Why.
        reason: String,
    },
    /// `location_update {lat, lon, accuracy_m?, recorded_at?}` (and `cmd.ride.location`,
    /// which may name the ride).
    LocationUpdate {
        /// Where.
        point: GeoPoint,
        /// Reported accuracy.
        accuracy_m: Option<f64>,
        /// When the device took the fix.
        recorded_at: Option<DateTime<Utc>>,
        /// The ride, when the sender names it.
        ride_id: Option<RideId>,
    },
    /// `beacon_update {is_active, lat, lon}`.
    BeaconUpdate {
        /// Online or not.
        is_active: bool,
        /// Where.
        point: GeoPoint,
    },
}

/// The frame types that are commands (everything else is `unknown_type`).
pub const COMMAND_TYPES: [&str; 8] = [
    "beacon_update",
    "location_update",
    "finder_update",
    "match_confirm",
    "ride_start",
    "ride_arrived",
    "payment_process",
    "ride_cancel",
];

#[derive(Deserialize)]
struct Point {
    lat: f64,
    lon: f64,
}

#[derive(Deserialize)]
struct FinderUpdate {
    is_active: bool,
    pickup: Option<Point>,
    destination: Option<Point>,
}

#[derive(Deserialize)]
struct MatchConfirm {
    match_id: MatchId,
    accepted: bool,
}

#[derive(Deserialize)]
struct RideRef {
    ride_id: RideId,
}

#[derive(Deserialize)]
struct RideArrived {
    ride_id: RideId,
    #[serde(default)]
    adjustment_factor: Option<Value>,
}

#[derive(Deserialize)]
struct PaymentProcess {
    ride_id: RideId,
    amount: i64,
    accepted: bool,
}

#[derive(Deserialize)]
struct RideCancel {
    ride_id: RideId,
    reason: String,
}

#[derive(Deserialize)]
struct LocationUpdate {
    lat: f64,
    lon: f64,
    #[serde(default)]
    accuracy_m: Option<f64>,
    #[serde(default)]
    recorded_at: Option<String>,
    #[serde(default)]
    ride_id: Option<RideId>,
}

#[derive(Deserialize)]
struct BeaconUpdate {
    is_active: bool,
    lat: f64,
    lon: f64,
}

fn fields<T: DeserializeOwned>(kind: &str, data: &Value) -> Result<T, DomainError> {
    T::deserialize(data).map_err(|e| DomainError::validation(format!("{kind}: {e}")))
}

fn point(p: Point) -> Result<GeoPoint, DomainError> {
    GeoPoint::new(p.lat, p.lon)
}

impl ClientCommand {
    /// Parses a command of type `kind` from its `data`. Unknown kinds are
    /// `unknown_type`; bad fields `validation_failed`.
    pub fn parse(kind: &str, data: &Value) -> Result<Self, DomainError> {
        if !data.is_object() {
            return Err(DomainError::validation(format!("{kind}: data must be an object")));
        }
        match kind {
            "finder_update" => {
                let f: FinderUpdate = fields(kind, data)?;
                if !f.is_active {
                    return Ok(Self::CancelMatch);
                }
                let (Some(pickup), Some(destination)) = (f.pickup, f.destination) else {
                    return Err(DomainError::validation(
                        "finder_update: pickup and destination are required when is_active is true",
                    ));
                };
                Ok(Self::RequestMatch {
                    pickup: point(pickup)?,
                    destination: point(destination)?,
                })
            }
            "match_confirm" => {
                let f: MatchConfirm = fields(kind, data)?;
                Ok(Self::MatchConfirm {
                    match_id: f.match_id,
                    accepted: f.accepted,
                })
            }
            "ride_start" => Ok(Self::RideStart {
                ride_id: fields::<RideRef>(kind, data)?.ride_id,
            }),
            "ride_arrived" => {
                let f: RideArrived = fields(kind, data)?;
                let adjustment_factor = match f.adjustment_factor {
                    None | Some(Value::Null) => None,
                    Some(Value::Number(n)) => Some(AdjustmentFactor::parse(&n.to_string())?),
                    Some(Value::String(s)) => Some(AdjustmentFactor::parse(&s)?),
                    Some(_) => return Err(DomainError::validation("adjustment_factor must be a number")),
                };
                Ok(Self::RideArrived {
                    ride_id: f.ride_id,
                    adjustment_factor,
                })
            }
            "payment_process" => {
                let f: PaymentProcess = fields(kind, data)?;
                if f.amount <= 0 {
                    return Err(DomainError::validation(
                        "amount must be a positive number of rupiah",
                    ));
                }
                Ok(Self::PaymentProcess {
                    ride_id: f.ride_id,
                    amount: f.amount,
                    accepted: f.accepted,
                })
            }
            "ride_cancel" => {
                let f: RideCancel = fields(kind, data)?;
                if f.reason.trim().is_empty() {
                    return Err(DomainError::validation("ride_cancel: reason is required"));
                }
                Ok(Self::RideCancel {
                    ride_id: f.ride_id,
                    reason: f.reason,
                })
            }
            "location_update" => {
                let f: LocationUpdate = fields(kind, data)?;
                if let Some(acc) = f.accuracy_m {
                    if !acc.is_finite() || acc < 0.0 {
                        return Err(DomainError::validation(
                            "accuracy_m must be a non-negative number",
                        ));
                    }
                }
                let recorded_at = match f.recorded_at {
                    None => None,
                    Some(text) => Some(
                        DateTime::parse_from_rfc3339(&text)
                            .map_err(|e| {
                                DomainError::validation(format!("recorded_at must be RFC 3339: {e}"))
                            })?
                            .with_timezone(&Utc),
                    ),
                };
                Ok(Self::LocationUpdate {
                    point: GeoPoint::new(f.lat, f.lon)?,
                    accuracy_m: f.accuracy_m,
                    recorded_at,
                    ride_id: f.ride_id,
                })
            }
            "beacon_update" => {
                let f: BeaconUpdate = fields(kind, data)?;
                Ok(Self::BeaconUpdate {
                    is_active: f.is_active,
                    point: GeoPoint::new(f.lat, f.lon)?,
                })
            }
            other => Err(DomainError::new(
                ErrorCode::UnknownType,
                format!("unknown command type {other:?}"),
            )),
        }
    }
}

/// The NATS command envelope: `{command_id, data}`, and optionally `actor {user_id,
/// role}`. The actor is the token's (the `Authorization` header); an `actor` in the body
/// is only compared with it ([`NatsEnvelope::check_actor`]).
#[derive(Debug, Clone, Deserialize)]
pub struct NatsEnvelope {
    /// The sender's command id (the idempotency key, with the user id).
    pub command_id: String,
    /// Who the sender says it is, if it says; never trusted.
    #[serde(default)]
    pub actor: Option<NatsActor>,
    /// The command's fields, as in the WebSocket frame.
    pub data: Value,
}

/// The actor field of a NATS command.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct NatsActor {
    /// The user.
    pub user_id: UserId,
    /// Their role.
    pub role: Role,
}

impl NatsEnvelope {
    /// Reads an envelope; anything else is `invalid_payload`.
    pub fn parse(bytes: &[u8]) -> Result<Self, DomainError> {
        let envelope: Self = serde_json::from_slice(bytes).map_err(|e| {
            DomainError::new(ErrorCode::InvalidPayload, format!("not a command envelope: {e}"))
        })?;
        if envelope.command_id.is_empty() || envelope.command_id.len() > 128 {
            return Err(DomainError::new(
                ErrorCode::InvalidPayload,
                "command_id must be 1 to 128 characters",
            ));
        }
        Ok(envelope)
    }

    /// `forbidden` when the body names an actor other than `token_actor`, the one the
    /// token stands for (SPEC.md §4 "NATS").
    pub fn check_actor(&self, token_actor: Actor) -> Result<(), DomainError> {
        match self.actor {
            Some(claimed) if Actor::new(claimed.user_id, claimed.role) != token_actor => Err(
                DomainError::forbidden("the envelope's actor is not the token's subject and role"),
            ),
            _ => Ok(()),
        }
    }
}

/// The command a NATS subject carries: `cmd.match.request` → `finder_update` (active),
/// and so on. Returns `None` for a subject we do not serve.
pub fn command_for_subject(subject: &str, data: &Value) -> Option<Result<ClientCommand, DomainError>> {
    let kind = match subject {
        "cmd.match.request" => {
            let mut data = data.clone();
            if let Some(map) = data.as_object_mut() {
                map.insert("is_active".into(), Value::Bool(true));
            }
            return Some(ClientCommand::parse("finder_update", &data));
        }
        "cmd.match.cancel" => return Some(Ok(ClientCommand::CancelMatch)),
        "cmd.match.confirm" => "match_confirm",
        "cmd.ride.start" => "ride_start",
        "cmd.ride.location" => "location_update",
        "cmd.ride.arrive" => "ride_arrived",
        "cmd.ride.pay" => "payment_process",
        "cmd.ride.cancel" => "ride_cancel",
        "cmd.driver.beacon" => "beacon_update",
        _ => return None,
    };
    Some(ClientCommand::parse(kind, data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn wrong_types_are_validation_failed() {
        let e = ClientCommand::parse("ride_start", &json!({"ride_id": 5})).unwrap_err();
        assert_eq!(e.code, ErrorCode::ValidationFailed);
        let e = ClientCommand::parse(
            "payment_process",
            &json!({"ride_id": uuid::Uuid::nil(), "amount": "x", "accepted": true}),
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::ValidationFailed);
        let e = ClientCommand::parse("ride_start", &json!([1])).unwrap_err();
        assert_eq!(e.code, ErrorCode::ValidationFailed);
    }

    #[test]
    fn non_positive_amounts_are_refused() {
        for amount in [0, -5] {
            let e = ClientCommand::parse(
                "payment_process",
                &json!({"ride_id": uuid::Uuid::nil(), "amount": amount, "accepted": true}),
            )
            .unwrap_err();
            assert_eq!(e.code, ErrorCode::ValidationFailed);
        }
    }

    #[test]
    fn unknown_types_are_unknown_type() {
        assert_eq!(
            ClientCommand::parse("fly", &json!({})).unwrap_err().code,
            ErrorCode::UnknownType
        );
    }

    #[test]
    fn adjustment_factor_is_exact() {
        let c = ClientCommand::parse(
            "ride_arrived",
            &json!({"ride_id": uuid::Uuid::nil(), "adjustment_factor": 0.57}),
        )
        .unwrap();
        assert!(matches!(
            c,
            ClientCommand::RideArrived {
                adjustment_factor: Some(_),
                ..
            }
        ));
        for bad in [json!(0), json!(1.5), json!(0.12345), json!(-0.5), json!(true)] {
            let e = ClientCommand::parse(
                "ride_arrived",
                &json!({"ride_id": uuid::Uuid::nil(), "adjustment_factor": bad}),
            )
            .unwrap_err();
            assert_eq!(e.code, ErrorCode::ValidationFailed, "{bad}");
        }
    }

    #[test]
    fn envelopes_that_are_not_envelopes_are_invalid_payload() {
        for bad in [
            &b"not json"[..],
            br#"{"command_id": "1"}"#,
            br#"{"command_id": "", "data": {}}"#,
            br#"{"command_id": "1", "actor": {"user_id": 5}, "data": {}}"#,
        ] {
            assert_eq!(
                NatsEnvelope::parse(bad).unwrap_err().code,
                ErrorCode::InvalidPayload
            );
        }
    }

    #[test]
    fn an_envelope_actor_other_than_the_tokens_is_forbidden() {
        let me = Actor::new(UserId::from_uuid(uuid::Uuid::now_v7()), Role::Driver);
        let body = |actor: Value| {
            serde_json::to_vec(&json!({"command_id": "1", "actor": actor, "data": {}})).unwrap()
        };
        let same = NatsEnvelope::parse(&body(json!({"user_id": me.user_id, "role": "driver"}))).unwrap();
        assert!(same.check_actor(me).is_ok());
        let absent = NatsEnvelope::parse(br#"{"command_id": "1", "data": {}}"#).unwrap();
        assert!(absent.check_actor(me).is_ok());
        for other in [
            json!({"user_id": uuid::Uuid::now_v7(), "role": "driver"}),
            json!({"user_id": me.user_id, "role": "passenger"}),
        ] {
            let forged = NatsEnvelope::parse(&body(other)).unwrap();
            assert_eq!(forged.check_actor(me).unwrap_err().code, ErrorCode::Forbidden);
        }
    }
}
