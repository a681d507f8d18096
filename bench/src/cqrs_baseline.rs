//! The baseline: the same domain logic on stock cqrs-es + postgres-es.
//!
//! `CqrsRide` adapts our pure `Ride` to `cqrs_es::Aggregate` (`handle` calls `decide`,
//! `apply` calls `evolve`), so the two systems differ only in their infrastructure.

use std::sync::Arc;

use commands::clock::Clock;
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use domain::aggregate::{Aggregate as _, Context, DomainEvent as _};
use domain::ride::{Ride, RideCommand, RideEvent};
use domain::{DomainError, Policy};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What `handle` needs: the clock and the policy.
#[derive(Debug, Clone)]
pub struct Services {
    /// The same clock our pipeline uses in the bench.
    pub clock: Arc<dyn Clock>,
    /// Default business parameters.
    pub policy: Policy,
}

/// Our ride, as a cqrs-es aggregate.
#[derive(Debug, Default)]
pub struct CqrsRide(Ride);

// cqrs-es wants aggregates serializable for snapshots; the baseline runs without
// snapshots (postgres-es's default `postgres_cqrs`), so the state is never stored.
impl Serialize for CqrsRide {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_unit()
    }
}

impl<'de> Deserialize<'de> for CqrsRide {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <()>::deserialize(d)?;
        Ok(Self::default())
    }
}

/// Our ride event, as a cqrs-es event.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CqrsRideEvent(pub RideEvent);

impl PartialEq for CqrsRideEvent {
    fn eq(&self, other: &Self) -> bool {
        serde_json::to_value(self).ok() == serde_json::to_value(other).ok()
    }
}

impl DomainEvent for CqrsRideEvent {
    fn event_type(&self) -> String {
        self.0.event_type().to_owned()
    }

    fn event_version(&self) -> String {
        self.0.event_version().to_string()
    }
}

impl Aggregate for CqrsRide {
    const TYPE: &'static str = "ride";
    type Command = RideCommand;
    type Event = CqrsRideEvent;
    type Error = DomainError;
    type Services = Services;

    async fn handle(
        &mut self,
        command: Self::Command,
        services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let ctx = Context {
            now: services.clock.now(),
            policy: &services.policy,
        };
        for event in self.0.decide(&command, &ctx)? {
            sink.write(CqrsRideEvent(event), self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.0.evolve(&event.0);
    }
}
