//! Load, decide, append, answer — for any [`Aggregate`].
//!
//! A [`Handler`] keeps recently used aggregates in memory (an LRU of slots). Each slot
//! has an async mutex, so commands on one aggregate in this process run one at a time
//! and never conflict with each other; the cached state is kept correct across
//! processes by the version check of the append: a conflict means another process
//! wrote, so the slot catches up from the store and the command is decided again, at
//! most [`MAX_ATTEMPTS`] times, then refused with `conflict`.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, SecondsFormat, Utc};
use domain::aggregate::{Aggregate, Context, DomainEvent, Reservation};
use domain::chain::{self, HashedFields};
use domain::{Actor, DomainError, ErrorCode, Policy};
use lru::LruCache;
use serde_json::{json, Value};
use tracing::Instrument;
use uuid::Uuid;

use crate::ack::Ack;
use crate::clock::{new_id, Clock};
use crate::store::{
    AppendOutcome, AppendRequest, DeadlineChange, EventStore, NewEvent, ReservationOp, StoreError,
};

/// Decisions per command before giving up with `conflict`.
pub const MAX_ATTEMPTS: usize = 5;

/// Who sent a command and how to recognise it again.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// The sender.
    pub actor: Actor,
    /// The idempotency key (user id + client command id), if the sender gave an id.
    pub command_key: Option<String>,
    /// The client's command id, as sent.
    pub command_id: Option<String>,
    /// The conversation this command belongs to.
    pub correlation_id: Uuid,
    /// The event that caused this command, for system commands.
    pub causation_id: Option<Uuid>,
}

impl Envelope {
    /// A command from a user with the user's own command id.
    pub fn from_user(actor: Actor, command_id: Option<&str>) -> Self {
        Self {
            actor,
            command_key: command_id.map(|id| format!("u:{}:{id}", actor.user_id)),
            command_id: command_id.map(str::to_owned),
            correlation_id: new_id(),
            causation_id: None,
        }
    }

    /// A command from the system, idempotent under `key`, caused by an event.
    pub fn system(key: String, causation_id: Option<Uuid>) -> Self {
        Self {
            actor: Actor::SYSTEM,
            command_id: Some(key.clone()),
            command_key: Some(key),
            correlation_id: causation_id.unwrap_or_else(new_id),
            causation_id,
        }
    }
}

/// An aggregate as this process last saw it.
#[derive(Debug, Clone)]
pub struct Loaded<A> {
    /// The state.
    pub state: A,
    /// Its version (number of events).
    pub version: i64,
    /// The hash of its last event.
    pub head_hash: [u8; 32],
}

impl<A: Aggregate> Default for Loaded<A> {
    fn default() -> Self {
        Self {
            state: A::default(),
            version: 0,
            head_hash: chain::GENESIS,
        }
    }
}

/// What a handled command led to.
#[derive(Debug, Clone)]
pub enum Outcome<A: Aggregate> {
    /// Accepted: the events appended and the state after them.
    Accepted {
        /// The state after the command.
        state: A,
        /// The aggregate's version after the command.
        version: i64,
        /// What was appended (empty when the command changed nothing).
        events: Vec<A::Event>,
        /// The answer (as logged for the command id).
        answer: Ack,
    },
    /// Refused by the domain (or `already_active` / `conflict`).
    Refused(DomainError),
    /// The command id was seen before: its first answer.
    Duplicate(Ack),
}

/// Errors that are not refusals.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored event could not be read back.
    #[error("stored event {aggregate_type}/{aggregate_id}#{sequence} is unreadable: {reason}")]
    Corrupt {
        /// Its aggregate type.
        aggregate_type: String,
        /// Its aggregate.
        aggregate_id: Uuid,
        /// Its sequence.
        sequence: i64,
        /// Why.
        reason: String,
    },
}

/// Shapes the answer to an accepted command from the state after it and its events.
pub type Respond<'a, A> = dyn Fn(&Loaded<A>, &[<A as Aggregate>::Event]) -> Ack + Sync + 'a;

type Slot<A> = Arc<tokio::sync::Mutex<Option<Loaded<A>>>>;

/// The command handler of one aggregate type.
#[derive(Debug)]
pub struct Handler<A: Aggregate> {
    store: EventStore,
    cache: Mutex<LruCache<Uuid, Slot<A>>>,
    policy: Arc<Policy>,
    clock: Arc<dyn Clock>,
}

/// The decision for one attempt: what to append and what to answer.
struct Decision<A: Aggregate> {
    events: Vec<A::Event>,
    after: Loaded<A>,
    refusal: Option<DomainError>,
    answer: Option<Ack>,
}

impl<A: Aggregate> Handler<A> {
    /// A handler caching up to `capacity` aggregates.
    pub fn new(store: EventStore, policy: Arc<Policy>, clock: Arc<dyn Clock>, capacity: usize) -> Self {
        let capacity = NonZeroUsize::new(capacity.max(1)).unwrap_or(NonZeroUsize::MIN);
        Self {
            store,
            cache: Mutex::new(LruCache::new(capacity)),
            policy,
            clock,
        }
    }

    /// The store.
    pub fn store(&self) -> &EventStore {
        &self.store
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    fn slot(&self, id: Uuid) -> Slot<A> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get_or_insert(id, || Arc::new(tokio::sync::Mutex::new(None)))
            .clone()
    }

    /// The aggregate as it stands now (from the cache, caught up with the store).
    pub async fn load(&self, id: Uuid) -> Result<Loaded<A>, PipelineError> {
        self.load_unless(id, |_| false).await
    }

    /// The cached aggregate when `settled` holds for it, else as [`load`](Self::load)
    /// reads it. A cached state may be behind another process's writes, so `settled`
    /// should accept only what cannot be undone (the aggregate exists, who takes part in
    /// it) or what [`execute`](Self::execute) checks again (a trip point for a ride in
    /// progress: its append checks the version); a "no" then comes from the store.
    pub async fn load_unless(
        &self,
        id: Uuid,
        settled: impl FnOnce(&Loaded<A>) -> bool,
    ) -> Result<Loaded<A>, PipelineError> {
        let slot = self.slot(id);
        let mut guard = slot.lock().await;
        let cached = guard.take();
        let settled = cached.as_ref().is_some_and(settled);
        let mut loaded = cached.unwrap_or_default();
        if !settled {
            catch_up(&self.store, id, &mut loaded).await?;
        }
        *guard = Some(loaded.clone());
        Ok(loaded)
    }

    /// Handles one command: decide against the current state, append, retry on
    /// conflict. An accepted command is answered `{aggregate_id, version, status}`.
    pub async fn execute(
        &self,
        id: Uuid,
        env: &Envelope,
        command: &A::Command,
    ) -> Result<Outcome<A>, PipelineError> {
        self.execute_with(id, env, command, &|loaded, _| standard_result(id, loaded))
            .await
    }

    /// Like [`execute`](Self::execute), with the answer to an accepted command shaped
    /// by `respond` (it is logged for the command id, so a resend gets the same).
    pub async fn execute_with(
        &self,
        id: Uuid,
        env: &Envelope,
        command: &A::Command,
        respond: &Respond<'_, A>,
    ) -> Result<Outcome<A>, PipelineError> {
        let span = tracing::info_span!(
            "command",
            aggregate_type = A::TYPE,
            aggregate_id = %id,
            command = A::command_name(command),
            actor = %env.actor.user_id,
            command_id = env.command_id.as_deref().unwrap_or(""),
        );
        async move {
            let started = std::time::Instant::now();
            let slot = self.slot(id);
            let mut guard = slot.lock().await;
            // `fresh`: read from the store during this call. A cached state may be behind
            // another process's writes; the append's version check catches that for a
            // decision with events, not for a refusal or a no-op, so those are decided
            // again on a fresh read before they are answered.
            let (mut loaded, mut fresh) = match guard.take() {
                Some(loaded) => (loaded, false),
                None => {
                    let mut loaded = Loaded::default();
                    catch_up(&self.store, id, &mut loaded).await?;
                    (loaded, true)
                }
            };
            let mut result = None;
            for attempt in 1..=MAX_ATTEMPTS {
                let now = self.clock.now();
                let mut decision = self.decide(&loaded, command, now);
                if decision.events.is_empty() && !fresh {
                    catch_up(&self.store, id, &mut loaded).await?;
                    decision = self.decide(&loaded, command, now);
                }
                let request = self.request(id, env, &loaded, &mut decision, respond, now);
                let Some(request) = request else {
                    // Refused, nothing to log: answer without touching the store.
                    result = Some(Outcome::Refused(decision.refusal.unwrap_or_else(|| {
                        DomainError::new(ErrorCode::Internal, "refusal without a reason")
                    })));
                    break;
                };
                if request.events.is_empty() {
                    // Nothing to append, at most an answer to log: the state stays as it
                    // is, so the aggregate is let go before that commit and concurrent
                    // refusals (five drivers answering one proposal) commit together.
                    *guard = Some(loaded);
                    drop(guard);
                    let outcome = self.log_only(id, &slot, request, decision).await?;
                    return Ok(record(started, outcome));
                }
                match self.store.append(request).await {
                    Ok(AppendOutcome::Written { .. }) => {
                        let (outcome, after) = accepted(id, decision);
                        result = Some(outcome);
                        loaded = after;
                        break;
                    }
                    Ok(AppendOutcome::Duplicate(response)) => {
                        result = Some(Outcome::Duplicate(Ack::from_value(response)));
                        // Someone may have written since; catch up before the next command.
                        catch_up(&self.store, id, &mut loaded).await?;
                        break;
                    }
                    Ok(AppendOutcome::AlreadyActive { user_id, .. }) => {
                        result = Some(Outcome::Refused(already_active(user_id)));
                        break;
                    }
                    Ok(AppendOutcome::Conflict { actual_version }) => {
                        metrics::counter!("nebengjek_command_conflicts_total", "aggregate" => A::TYPE)
                            .increment(1);
                        tracing::debug!(attempt, actual_version, "conflict; catching up");
                        catch_up(&self.store, id, &mut loaded).await?;
                        fresh = true;
                        if attempt < MAX_ATTEMPTS {
                            let jitter = rand::random::<u64>() % (attempt as u64 * 2 + 1);
                            tokio::time::sleep(std::time::Duration::from_millis(jitter)).await;
                        }
                    }
                    Err(error) => {
                        // The batch failed as a whole; forget the cached state, it may be stale.
                        *guard = None;
                        return Err(error.into());
                    }
                }
            }
            *guard = Some(loaded);
            let outcome = result.unwrap_or_else(|| Outcome::Refused(conflict::<A>()));
            Ok(record(started, outcome))
        }
        .instrument(span)
        .await
    }

    /// Logs the answer to a decision that appends nothing (a refusal, or an accepted
    /// no-op such as a jitter point), with the aggregate already let go.
    async fn log_only(
        &self,
        id: Uuid,
        slot: &Slot<A>,
        request: AppendRequest,
        decision: Decision<A>,
    ) -> Result<Outcome<A>, PipelineError> {
        let written = if request.command_key.is_none() {
            // Accepted without effect and nothing to remember.
            Ok(AppendOutcome::Written {
                first_position: 0,
                last_position: 0,
            })
        } else {
            self.store.append(request).await
        };
        Ok(match written {
            Ok(AppendOutcome::Written { .. }) => accepted(id, decision).0,
            Ok(AppendOutcome::Duplicate(response)) => {
                // Someone may have written since; catch up before the next command.
                let mut guard = slot.lock().await;
                if let Some(loaded) = guard.as_mut() {
                    catch_up(&self.store, id, loaded).await?;
                }
                Outcome::Duplicate(Ack::from_value(response))
            }
            Ok(AppendOutcome::AlreadyActive { user_id, .. }) => Outcome::Refused(already_active(user_id)),
            // The store checks versions only for requests with events; answered as a
            // conflict, should that ever change.
            Ok(AppendOutcome::Conflict { .. }) => Outcome::Refused(conflict::<A>()),
            Err(error) => {
                *slot.lock().await = None;
                return Err(error.into());
            }
        })
    }

    fn decide(&self, loaded: &Loaded<A>, command: &A::Command, now: DateTime<Utc>) -> Decision<A> {
        let ctx = Context {
            now,
            policy: &self.policy,
        };
        match loaded.state.decide(command, &ctx) {
            Err(refusal) => Decision {
                events: Vec::new(),
                after: loaded.clone(),
                refusal: Some(refusal),
                answer: None,
            },
            Ok(events) => {
                let mut after = loaded.clone();
                for event in &events {
                    after.state.evolve(event);
                }
                after.version += events.len() as i64;
                Decision {
                    events,
                    after,
                    refusal: None,
                    answer: None,
                }
            }
        }
    }

    /// The append request for a decision, or `None` when nothing needs writing (a
    /// refusal of a command without an id).
    fn request(
        &self,
        id: Uuid,
        env: &Envelope,
        before: &Loaded<A>,
        decision: &mut Decision<A>,
        respond: &Respond<'_, A>,
        now: DateTime<Utc>,
    ) -> Option<AppendRequest> {
        let response = match &decision.refusal {
            Some(refusal) => {
                env.command_key.as_ref()?;
                Ack::refused(refusal)
            }
            None => respond(&decision.after, &decision.events),
        };
        decision.answer = Some(response.clone());
        let response = response.to_value();
        let recorded_at = now.to_rfc3339_opts(SecondsFormat::Micros, true);
        let mut prev = before.head_hash;
        let mut events = Vec::with_capacity(decision.events.len());
        let mut reservations = Vec::new();
        for (i, event) in decision.events.iter().enumerate() {
            let (event_type, payload) = split_event(event);
            let metadata = json!({
                "event_id": new_id(),
                "command_id": env.command_id,
                "correlation_id": env.correlation_id,
                "causation_id": env.causation_id,
                "actor": { "user_id": env.actor.user_id, "role": env.actor.role },
                "recorded_at": recorded_at,
            });
            let id_text = id.to_string();
            let hash = chain::event_hash(
                &prev,
                &HashedFields {
                    aggregate_type: A::TYPE,
                    aggregate_id: &id_text,
                    sequence: before.version + 1 + i as i64,
                    event_type,
                    event_version: i32::from(event.event_version()),
                    payload: &payload,
                    metadata: &metadata,
                },
            );
            prev = hash;
            reservations.extend(event.reservations().into_iter().map(|r| match r {
                Reservation::Claim(u) => ReservationOp::Claim(u.as_uuid()),
                Reservation::Release(u) => ReservationOp::Release(u.as_uuid()),
                Reservation::Transfer { user, to_type, to_id } => ReservationOp::Transfer {
                    user: user.as_uuid(),
                    to_type,
                    to_id,
                },
            }));
            events.push(NewEvent {
                event_type,
                event_version: i32::from(event.event_version()),
                payload,
                metadata,
                hash: hash.to_vec(),
            });
        }
        let deadline = if events.is_empty() || before.state.deadline() == decision.after.state.deadline() {
            DeadlineChange::Keep
        } else {
            match decision.after.state.deadline() {
                Some(due) => DeadlineChange::Set(due),
                None => DeadlineChange::Clear,
            }
        };
        if !events.is_empty() {
            decision.after.head_hash = prev;
        }
        Some(AppendRequest {
            command_key: env.command_key.clone(),
            aggregate_type: A::TYPE,
            aggregate_id: id,
            expected_version: before.version,
            events,
            recorded_at: now,
            reservations,
            deadline,
            response,
        })
    }
}

/// `{aggregate_id, version, status}`: the answer to an accepted ride or match command.
pub fn standard_result<A: Aggregate>(id: Uuid, loaded: &Loaded<A>) -> Ack {
    Ack::ok(json!({
        "aggregate_id": id,
        "version": loaded.version,
        "status": loaded.state.status(),
    }))
}

/// The outcome of a decision whose request was written, and the state after it.
fn accepted<A: Aggregate>(id: Uuid, decision: Decision<A>) -> (Outcome<A>, Loaded<A>) {
    let outcome = match decision.refusal {
        Some(refusal) => Outcome::Refused(refusal),
        None => Outcome::Accepted {
            state: decision.after.state.clone(),
            version: decision.after.version,
            answer: decision
                .answer
                .unwrap_or_else(|| standard_result(id, &decision.after)),
            events: decision.events,
        },
    };
    (outcome, decision.after)
}

fn already_active(user_id: Uuid) -> DomainError {
    DomainError::new(
        ErrorCode::AlreadyActive,
        format!("user {user_id} is already in an open match or ride"),
    )
}

fn conflict<A: Aggregate>() -> DomainError {
    DomainError::new(
        ErrorCode::Conflict,
        format!("{} kept changing concurrently; try again", A::TYPE),
    )
}

/// Counts a handled command by outcome and passes it on.
fn record<A: Aggregate>(started: std::time::Instant, outcome: Outcome<A>) -> Outcome<A> {
    let label = match &outcome {
        Outcome::Accepted { .. } => "accepted",
        Outcome::Refused(_) => "refused",
        Outcome::Duplicate(_) => "duplicate",
    };
    metrics::histogram!("nebengjek_command_seconds", "aggregate" => A::TYPE, "outcome" => label)
        .record(started.elapsed().as_secs_f64());
    outcome
}

/// Splits a serialized event into its stored name and payload.
pub fn split_event<E: DomainEvent>(event: &E) -> (&'static str, Value) {
    let payload = match serde_json::to_value(event) {
        Ok(Value::Object(mut map)) => map.remove("payload").unwrap_or(Value::Null),
        _ => Value::Null,
    };
    (event.event_type(), payload)
}

/// Reads a stored event back into the domain type.
pub fn parse_event<E: DomainEvent>(event_type: &str, payload: &Value) -> Result<E, serde_json::Error> {
    serde_json::from_value(json!({ "event_type": event_type, "payload": payload }))
}

/// Brings a loaded aggregate up to date with the store.
async fn catch_up<A: Aggregate>(
    store: &EventStore,
    id: Uuid,
    loaded: &mut Loaded<A>,
) -> Result<(), PipelineError> {
    let events = migrations::read_stream(store.pool(), A::TYPE, id, loaded.version)
        .await
        .map_err(StoreError::from)?;
    for stored in events {
        let event: A::Event =
            parse_event(&stored.event_type, &stored.payload).map_err(|e| PipelineError::Corrupt {
                aggregate_type: A::TYPE.to_owned(),
                aggregate_id: id,
                sequence: stored.sequence,
                reason: e.to_string(),
            })?;
        loaded.state.evolve(&event);
        loaded.version = stored.sequence;
        if let Ok(hash) = <[u8; 32]>::try_from(stored.hash.as_slice()) {
            loaded.head_hash = hash;
        }
    }
    Ok(())
}
