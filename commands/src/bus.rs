//! The command bus: one entry point for every client command, whichever way it came
//! (WebSocket, NATS, tests). It turns a [`ClientCommand`] from an authenticated actor
//! into a domain command on the right aggregate and answers with an [`Ack`].

use std::sync::Arc;

use domain::matching::{Match, MatchCommand};
use domain::ride::{PaymentOutcome, Ride, RideCommand, RideEvent};
use domain::{Actor, Aggregate, DomainError, ErrorCode, MatchId, Policy, RideId, Role, Rupiah};
use serde_json::json;
use uuid::Uuid;

use crate::ack::Ack;
use crate::clock::{new_id, Clock};
use crate::ingress::ClientCommand;
use crate::pipeline::{Envelope, Handler, Loaded, Outcome, PipelineError};
use crate::ports::{charge_with_retry, ChargeError, PaymentProvider, Positions};
use crate::store::EventStore;

/// Aggregates kept in memory per type.
const CACHE_CAPACITY: usize = 100_000;

/// Everything needed to handle commands.
#[derive(Debug, Clone)]
pub struct CommandBus {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    rides: Handler<Ride>,
    matches: Handler<Match>,
    positions: Arc<dyn Positions>,
    payments: Arc<dyn PaymentProvider>,
    clock: Arc<dyn Clock>,
    policy: Arc<Policy>,
    rate: crate::rate::CommandRate,
}

impl CommandBus {
    /// A bus over `store`.
    pub fn new(
        store: EventStore,
        policy: Policy,
        clock: Arc<dyn Clock>,
        positions: Arc<dyn Positions>,
        payments: Arc<dyn PaymentProvider>,
    ) -> Self {
        let policy = Arc::new(policy);
        Self {
            inner: Arc::new(Inner {
                rides: Handler::new(store.clone(), policy.clone(), clock.clone(), CACHE_CAPACITY),
                matches: Handler::new(store, policy.clone(), clock.clone(), CACHE_CAPACITY),
                positions,
                payments,
                clock,
                policy,
                rate: crate::rate::CommandRate::unlimited(),
            }),
        }
    }

    /// The bus with a per-user command rate (see [`crate::rate`]). Called once, right
    /// after [`CommandBus::new`], before the bus is cloned.
    ///
    /// # Panics
    /// When the bus was already cloned.
    #[must_use]
    pub fn with_command_rate(mut self, limit: crate::rate::RateLimit) -> Self {
        let inner = Arc::get_mut(&mut self.inner).expect("configure the command rate before cloning the bus");
        inner.rate = crate::rate::CommandRate::new(limit);
        self
    }

    /// The ride handler.
    pub fn rides(&self) -> &Handler<Ride> {
        &self.inner.rides
    }

    /// The match handler.
    pub fn matches(&self) -> &Handler<Match> {
        &self.inner.matches
    }

    /// The store.
    pub fn store(&self) -> &EventStore {
        self.inner.rides.store()
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// The last-known-positions port.
    pub fn positions(&self) -> &Arc<dyn Positions> {
        &self.inner.positions
    }

    /// Handles a client command from an authenticated actor. `command_id` is the
    /// client's id for it (the WebSocket frame id, the NATS command id): with the
    /// actor's user id it makes the command idempotent.
    pub async fn dispatch(&self, actor: Actor, command_id: Option<&str>, command: ClientCommand) -> Ack {
        if actor.role != Role::System {
            if let Err(retry_after) = self.inner.rate.take(actor.user_id, std::time::Instant::now()) {
                metrics::counter!("nebengjek_commands_rate_limited_total").increment(1);
                return Ack::rate_limited(retry_after);
            }
        }
        let env = Envelope::from_user(actor, command_id);
        match self.handle(&env, command).await {
            Ok(ack) => ack,
            Err(error) => {
                tracing::error!(%error, actor = %actor.user_id, "command failed");
                Ack::error(
                    ErrorCode::Internal,
                    "internal error; the command may be retried with the same id",
                )
            }
        }
    }

    async fn handle(&self, env: &Envelope, command: ClientCommand) -> Result<Ack, PipelineError> {
        let actor = env.actor;
        match command {
            ClientCommand::RequestMatch { pickup, destination } => {
                let match_id = MatchId::from_uuid(new_id());
                let cmd = MatchCommand::Request {
                    match_id,
                    actor,
                    pickup,
                    destination,
                };
                let outcome = self
                    .inner
                    .matches
                    .execute_with(match_id.as_uuid(), env, &cmd, &|loaded: &Loaded<Match>, _| {
                        Ack::ok(json!({ "match_id": match_id, "status": loaded.state.status() }))
                    })
                    .await?;
                Ok(answer(outcome))
            }
            ClientCommand::CancelMatch => {
                let Some(match_id) = self.open_aggregate(actor, "match").await? else {
                    return Ok(refuse_unknown(DomainError::not_found("no open match to cancel")));
                };
                self.on_match(match_id, env, MatchCommand::Cancel { actor }).await
            }
            ClientCommand::MatchConfirm { match_id, accepted } => {
                let cmd = match (actor.role, accepted) {
                    (Role::Driver, true) => MatchCommand::Accept { actor },
                    (Role::Driver, false) => MatchCommand::Decline { actor },
                    (Role::Passenger, true) => MatchCommand::Confirm {
                        actor,
                        ride_id: RideId::from_uuid(new_id()),
                    },
                    (Role::Passenger, false) => MatchCommand::Reject { actor },
                    (Role::Analyst | Role::System, _) => {
                        return Ok(Ack::refused(&DomainError::forbidden(
                            "only drivers and passengers confirm matches",
                        )))
                    }
                };
                self.on_match(match_id.as_uuid(), env, cmd).await
            }
            ClientCommand::RideStart { ride_id } => {
                // Who the passenger is never changes: a cached ride is enough.
                let ride = self.inner.rides.load_unless(ride_id.as_uuid(), exists).await?;
                let driver_position = self.inner.positions.last(actor.user_id).await;
                let passenger_position = match ride.state.passenger_id() {
                    Some(passenger) => self.inner.positions.last(passenger).await,
                    None => None,
                };
                let cmd = RideCommand::Start {
                    actor,
                    driver_position,
                    passenger_position,
                };
                self.on_ride(ride_id, env, cmd).await
            }
            ClientCommand::RideArrived {
                ride_id,
                adjustment_factor,
            } => {
                self.on_ride(
                    ride_id,
                    env,
                    RideCommand::Arrive {
                        actor,
                        adjustment_factor,
                    },
                )
                .await
            }
            ClientCommand::RideCancel { ride_id, reason } => {
                self.on_ride(ride_id, env, RideCommand::Cancel { actor, reason })
                    .await
            }
            ClientCommand::PaymentProcess {
                ride_id,
                amount,
                accepted,
            } => self.pay(env, ride_id, Rupiah::new(amount), accepted).await,
            ClientCommand::LocationUpdate {
                point,
                recorded_at,
                ride_id,
                ..
            } => {
                let now = self.inner.clock.now();
                let mut ack = Ack::ok(json!({}));
                if actor.role == Role::Driver {
                    // A ping names its ride over NATS; on the WebSocket it belongs to the
                    // driver's ride in progress, if any.
                    let (ride, named) = match ride_id {
                        Some(id) => (Some(id.as_uuid()), true),
                        None => (self.open_aggregate(actor, "ride").await?, false),
                    };
                    if let Some(ride_id) = ride {
                        // A cached ride in progress is enough to choose the command (a
                        // stale one conflicts at the append and is decided again); any
                        // other answer is checked against the store.
                        let loaded = self
                            .inner
                            .rides
                            .load_unless(ride_id, |l| {
                                exists(l) && (named || l.state.status() == "IN_PROGRESS")
                            })
                            .await?;
                        if named && !domain::Aggregate::exists(&loaded.state) {
                            return Ok(refuse_unknown(DomainError::not_found(format!(
                                "no ride {ride_id}"
                            ))));
                        }
                        if named || loaded.state.status() == "IN_PROGRESS" {
                            let cmd = RideCommand::RecordTripPoint {
                                actor,
                                point,
                                recorded_at,
                            };
                            let outcome = self
                                .inner
                                .rides
                                .execute_with(ride_id, env, &cmd, &|_, events| trip_point_answer(events))
                                .await?;
                            ack = answer(outcome);
                        }
                    }
                }
                if ack.ok {
                    // A trip point was checked by the ride; a bare position is checked
                    // here (the same domain check, `ServiceArea::check`).
                    if let Err(refusal) = self.inner.policy.service_area.check(&point, "location") {
                        return Ok(Ack::refused(&refusal));
                    }
                    self.inner.positions.record(actor.user_id, point, now).await;
                }
                Ok(ack)
            }
            ClientCommand::BeaconUpdate { point, .. } => {
                if actor.role != Role::Driver {
                    return Ok(Ack::refused(&DomainError::forbidden(
                        "only drivers send beacon updates",
                    )));
                }
                if let Err(refusal) = self.inner.policy.service_area.check(&point, "beacon") {
                    return Ok(Ack::refused(&refusal));
                }
                let now = self.inner.clock.now();
                self.inner.positions.record(actor.user_id, point, now).await;
                Ok(Ack::ok(json!({})))
            }
        }
    }

    async fn on_match(&self, id: Uuid, env: &Envelope, cmd: MatchCommand) -> Result<Ack, PipelineError> {
        if !exists(&self.inner.matches.load_unless(id, exists).await?) {
            return Ok(refuse_unknown(DomainError::not_found(format!("no match {id}"))));
        }
        Ok(answer(self.inner.matches.execute(id, env, &cmd).await?))
    }

    async fn on_ride(&self, ride_id: RideId, env: &Envelope, cmd: RideCommand) -> Result<Ack, PipelineError> {
        let id = ride_id.as_uuid();
        if !exists(&self.inner.rides.load_unless(id, exists).await?) {
            return Ok(refuse_unknown(DomainError::not_found(format!("no ride {id}"))));
        }
        Ok(answer(self.inner.rides.execute(id, env, &cmd).await?))
    }

    /// `payment_process`: refuse what the ride refuses *before* the provider is called,
    /// charge (idempotent per ride), then record the outcome.
    async fn pay(
        &self,
        env: &Envelope,
        ride_id: RideId,
        amount: Rupiah,
        accepted: bool,
    ) -> Result<Ack, PipelineError> {
        if let Some(key) = &env.command_key {
            if let Some(response) = self.store().logged_response(key).await? {
                return Ok(Ack::from_value(response));
            }
        }
        let id = ride_id.as_uuid();
        let loaded = self.inner.rides.load(id).await?;
        if !domain::Aggregate::exists(&loaded.state) {
            return Ok(refuse_unknown(DomainError::not_found(format!("no ride {id}"))));
        }
        let outcome = if !accepted {
            PaymentOutcome::Declined
        } else {
            match loaded.state.check_payment(&env.actor, amount) {
                Err(refusal) => return self.refuse_logged_on_ride(id, env, refusal).await,
                Ok(due) => match charge_with_retry(self.inner.payments.as_ref(), ride_id, due).await {
                    Ok(provider_ref) => PaymentOutcome::Charged { provider_ref },
                    Err(ChargeError::Declined(reason) | ChargeError::Transient(reason)) => {
                        PaymentOutcome::Failed { reason }
                    }
                },
            }
        };
        let cmd = RideCommand::Pay {
            actor: env.actor,
            amount,
            outcome,
        };
        let outcome = self
            .inner
            .rides
            .execute_with(id, env, &cmd, &|loaded: &Loaded<Ride>, events: &[RideEvent]| {
                payment_answer(id, loaded, events)
            })
            .await?;
        Ok(answer(outcome))
    }

    /// The user's open match or ride of the given type.
    async fn open_aggregate(
        &self,
        actor: Actor,
        aggregate_type: &str,
    ) -> Result<Option<Uuid>, PipelineError> {
        Ok(self
            .store()
            .holder_of(actor.user_id.as_uuid())
            .await?
            .filter(|(t, _)| t == aggregate_type)
            .map(|(_, id)| id))
    }

    /// A refusal on an existing ride that is logged for the command id (so a resend gets
    /// it again), without going through the aggregate.
    async fn refuse_logged_on_ride(
        &self,
        id: Uuid,
        env: &Envelope,
        refusal: DomainError,
    ) -> Result<Ack, PipelineError> {
        let ack = Ack::refused(&refusal);
        let Some(key) = &env.command_key else {
            return Ok(ack);
        };
        let request = crate::store::AppendRequest {
            command_key: Some(key.clone()),
            aggregate_type: "none",
            aggregate_id: id,
            expected_version: 0,
            events: Vec::new(),
            recorded_at: self.inner.clock.now(),
            reservations: Vec::new(),
            deadline: crate::store::DeadlineChange::Keep,
            response: ack.to_value(),
        };
        Ok(match self.store().append(request).await? {
            crate::store::AppendOutcome::Duplicate(first) => Ack::from_value(first),
            _ => ack,
        })
    }
}

/// A refusal of an id that names nothing (`not_found`): answered, never written to
/// `command_log`. It has no effect to repeat, so a resend may be answered afresh; and a
/// client making up ids costs a read, not a row (docs/security.md, "Hostile input and
/// abuse limits").
fn refuse_unknown(refusal: DomainError) -> Ack {
    metrics::counter!("nebengjek_commands_unknown_id_total").increment(1);
    Ack::refused(&refusal)
}

/// Whether the aggregate exists; once true it stays true, so a cached "yes" is settled
/// (see [`Handler::load_unless`]).
fn exists<A: domain::Aggregate>(loaded: &Loaded<A>) -> bool {
    domain::Aggregate::exists(&loaded.state)
}

/// The ack of an outcome.
pub fn answer<A: domain::Aggregate>(outcome: Outcome<A>) -> Ack {
    match outcome {
        Outcome::Accepted { answer, .. } => answer,
        Outcome::Refused(refusal) => Ack::refused(&refusal),
        Outcome::Duplicate(first) => first,
    }
}

fn trip_point_answer(events: &[RideEvent]) -> Ack {
    for event in events {
        if let RideEvent::TripPointRejected { reason, .. } = event {
            return Ack::ok(json!({ "rejected": reason }));
        }
    }
    Ack::ok(json!({}))
}

fn payment_answer(id: Uuid, loaded: &Loaded<Ride>, events: &[RideEvent]) -> Ack {
    for event in events {
        if let RideEvent::PaymentFailed { reason, .. } = event {
            return Ack::error(ErrorCode::PaymentFailed, format!("the payment failed: {reason}"));
        }
    }
    crate::pipeline::standard_result(id, loaded)
}
