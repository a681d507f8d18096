//! Which drivers have a proposal pending, as this process's feed has seen them.
//!
//! A driver who was only *proposed* a match holds nothing in the store (being proposed
//! is not being in it), so `session_state` cannot find the proposal there. The feed
//! notes each proposal here and forgets it when the driver answers or the match moves
//! on, so a driver who reconnects during the proposal sees it again. A process that
//! starts (a restart, a deploy, a new edge process) reads the pending proposals of the
//! open matches from the store once its feed is open, so a proposal made before it
//! started is not forgotten. What is noted is only a hint: `session_state` checks it
//! against the match itself before showing it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use domain::matching::MatchEvent;
use domain::{MatchId, UserId};

#[derive(Debug, Default)]
struct Book {
    by_driver: HashMap<UserId, HashSet<MatchId>>,
    by_match: HashMap<MatchId, HashSet<UserId>>,
}

/// The pending proposals (cheap to clone: one shared book).
#[derive(Debug, Clone, Default)]
pub struct Proposals {
    book: Arc<Mutex<Book>>,
}

impl Proposals {
    fn lock(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes what a match event changes.
    pub fn note(&self, match_id: MatchId, event: &MatchEvent) {
        let mut book = self.lock();
        match event {
            MatchEvent::Proposed { candidates, .. } => {
                for c in candidates {
                    book.by_driver.entry(c.driver_id).or_default().insert(match_id);
                    book.by_match.entry(match_id).or_default().insert(c.driver_id);
                }
            }
            MatchEvent::DriverDeclined { driver_id } => {
                if let Some(matches) = book.by_driver.get_mut(driver_id) {
                    matches.remove(&match_id);
                    if matches.is_empty() {
                        book.by_driver.remove(driver_id);
                    }
                }
                if let Some(drivers) = book.by_match.get_mut(&match_id) {
                    drivers.remove(driver_id);
                }
            }
            MatchEvent::DriverAccepted { .. }
            | MatchEvent::RoundTimedOut { .. }
            | MatchEvent::Confirmed { .. }
            | MatchEvent::Cancelled { .. }
            | MatchEvent::Expired { .. }
            | MatchEvent::Failed { .. } => {
                for driver in book.by_match.remove(&match_id).unwrap_or_default() {
                    if let Some(matches) = book.by_driver.get_mut(&driver) {
                        matches.remove(&match_id);
                        if matches.is_empty() {
                            book.by_driver.remove(&driver);
                        }
                    }
                }
            }
            MatchEvent::Requested { .. }
            | MatchEvent::DriverRejected { .. }
            | MatchEvent::RoundStarted { .. } => {}
        }
    }

    /// Notes the candidates a match has now (read from the store, not the feed): how a
    /// process that starts while proposals are pending learns them.
    pub fn pending(&self, match_id: MatchId, drivers: impl IntoIterator<Item = UserId>) {
        let mut book = self.lock();
        for driver in drivers {
            book.by_driver.entry(driver).or_default().insert(match_id);
            book.by_match.entry(match_id).or_default().insert(driver);
        }
    }

    /// The matches proposed to `driver` that are still pending, as far as we know.
    pub fn of(&self, driver: UserId) -> Vec<MatchId> {
        let mut ids: Vec<MatchId> = self
            .lock()
            .by_driver
            .get(&driver)
            .map(|m| m.iter().copied().collect())
            .unwrap_or_default();
        ids.sort();
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use domain::matching::Candidate;

    fn id() -> uuid::Uuid {
        uuid::Uuid::now_v7()
    }

    #[test]
    fn a_proposal_is_pending_until_answered_or_moved_on() {
        let book = Proposals::default();
        let (m, a, b) = (
            MatchId::from_uuid(id()),
            UserId::from_uuid(id()),
            UserId::from_uuid(id()),
        );
        let candidate = |driver_id| Candidate {
            driver_id,
            distance_km: 1.0,
            eta_seconds: 60,
        };
        book.note(
            m,
            &MatchEvent::Proposed {
                round: 1,
                candidates: vec![candidate(a), candidate(b)],
                proposed_at: Utc::now(),
            },
        );
        assert_eq!(book.of(a), vec![m]);
        book.note(m, &MatchEvent::DriverDeclined { driver_id: a });
        assert!(book.of(a).is_empty());
        assert_eq!(book.of(b), vec![m]);
        book.note(
            m,
            &MatchEvent::RoundTimedOut {
                round: 1,
                withdrawn_from: vec![b],
            },
        );
        assert!(book.of(b).is_empty());
    }
}
