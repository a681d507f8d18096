//! Who sends a command.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::UserId;

/// A user's role. `System` is the process itself (matcher, process manager, timers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Asks for rides and pays for them.
    Passenger,
    /// Drives; registered once with a vehicle.
    Driver,
    /// Reads the projections; created by an operator.
    Analyst,
    /// The system itself.
    System,
}

impl Role {
    /// The role's wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Passenger => "passenger",
            Role::Driver => "driver",
            Role::Analyst => "analyst",
            Role::System => "system",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The authenticated sender of a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Actor {
    /// The user's id (the nil UUID for the system).
    pub user_id: UserId,
    /// The user's role.
    pub role: Role,
}

impl Actor {
    /// The system itself.
    pub const SYSTEM: Actor = Actor {
        user_id: UserId::from_uuid(uuid::Uuid::nil()),
        role: Role::System,
    };

    /// A user acting in a role.
    pub const fn new(user_id: UserId, role: Role) -> Self {
        Self { user_id, role }
    }

    /// Whether this is the system.
    pub fn is_system(&self) -> bool {
        self.role == Role::System
    }
}
