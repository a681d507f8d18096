//! Identifier newtypes. Ids are UUIDs (v7, time-ordered) generated at the edge and
//! passed into the domain; the domain never makes one up, except for the ledger entry
//! ids, which are derived (UUID v5) from the ride id so that a replay reproduces them.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// Wraps an id made at the edge.
            pub const fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            /// The underlying UUID.
            pub const fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl From<Uuid> for $name {
            fn from(uuid: Uuid) -> Self {
                Self(uuid)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Uuid {
                id.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }
    };
}

id_type!(
    /// A user: passenger, driver or analyst. Drivers and passengers are both users.
    UserId
);
id_type!(
    /// A match: one passenger's request for a driver.
    MatchId
);
id_type!(
    /// A ride, created from a confirmed match.
    RideId
);
id_type!(
    /// The one payment of a ride.
    PaymentId
);
id_type!(
    /// A billing-ledger entry.
    EntryId
);

/// Namespace for ids derived from other ids (UUID v5), fixed forever: changing it would
/// change every derived ledger entry id of every replayed ride.
const DERIVED_NAMESPACE: Uuid = Uuid::from_u128(0x6e65_6265_6e67_6a65_6b2d_6c65_6467_6572);

impl EntryId {
    /// The id of a ride's ledger entry, derived from the ride id, the entry kind and a
    /// per-ride ordinal, so that replaying the events always yields the same ids.
    pub fn derive(ride: RideId, kind: &str, ordinal: u32) -> Self {
        let name = format!("{ride}/{kind}/{ordinal}");
        Self(Uuid::new_v5(&DERIVED_NAMESPACE, name.as_bytes()))
    }
}

impl PaymentId {
    /// The id of a ride's single payment, derived from the ride id.
    pub fn for_ride(ride: RideId) -> Self {
        let name = format!("{ride}/payment");
        Self(Uuid::new_v5(&DERIVED_NAMESPACE, name.as_bytes()))
    }
}
