//! Components that stopped on purpose, and why: what `/readyz` reports.
//!
//! A component that finds something it must not go past (the relay before a stream
//! whose tail is not the store's event) records it here instead of retrying quietly;
//! the operator endpoints turn red naming it, and a gauge says so. Cloning shares the
//! record: every clone sees the same components.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// The record of stopped components of one process.
#[derive(Debug, Clone, Default)]
pub struct Health {
    stopped: Arc<Mutex<BTreeMap<String, String>>>,
}

impl Health {
    /// `component` stopped because of `reason`.
    pub fn stop(&self, component: &str, reason: impl Into<String>) {
        self.lock().insert(component.to_owned(), reason.into());
    }

    /// `component` runs again.
    pub fn clear(&self, component: &str) {
        self.lock().remove(component);
    }

    /// Every stopped component and its reason, by name.
    pub fn stopped(&self) -> BTreeMap<String, String> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        // A panic while holding this lock cannot leave the map half-written.
        self.stopped
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_what_stopped() {
        let health = Health::default();
        let other = health.clone();
        health.stop("relay", "forged tail");
        assert_eq!(
            other.stopped().get("relay").map(String::as_str),
            Some("forged tail")
        );
        other.clear("relay");
        assert!(health.stopped().is_empty());
    }
}
