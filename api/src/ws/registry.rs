//! Who is connected to this process: user id → the push channels of their sockets.
//!
//! A user may hold several sockets (two phones, a reconnect racing the old socket's
//! close); a push goes to all of them. A socket that does not keep up (its channel is
//! full) is dropped from the registry, which ends its session: the app reconnects and
//! gets a fresh `session_state`, which is better than a silent gap.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use domain::UserId;
use serde_json::Value;
use tokio::sync::{mpsc, watch};

/// Pushes buffered per socket before it counts as too slow.
pub const PUSH_BUFFER: usize = 256;

type Senders = HashMap<UserId, Vec<(u64, mpsc::Sender<Value>)>>;

/// The registry (cheap to clone: one shared map).
#[derive(Debug, Clone, Default)]
pub struct Registry {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    sockets: Mutex<Senders>,
    next: AtomicU64,
    closing: watch::Sender<bool>,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            sockets: Mutex::default(),
            next: AtomicU64::default(),
            closing: watch::channel(false).0,
        }
    }
}

/// A socket's place in the registry; dropping it removes the socket.
#[derive(Debug)]
pub struct Registration {
    registry: Registry,
    user: UserId,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.remove(self.user, self.id);
    }
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Senders> {
        self.shared.sockets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a socket of `user`: the registration and the socket's push channel.
    pub fn register(&self, user: UserId) -> (Registration, mpsc::Receiver<Value>) {
        let (tx, rx) = mpsc::channel(PUSH_BUFFER);
        let id = self.shared.next.fetch_add(1, Ordering::Relaxed);
        self.lock().entry(user).or_default().push((id, tx));
        metrics::gauge!("nebengjek_ws_connections").increment(1.0);
        (
            Registration {
                registry: self.clone(),
                user,
                id,
            },
            rx,
        )
    }

    fn remove(&self, user: UserId, id: u64) {
        let mut sockets = self.lock();
        if let Some(list) = sockets.get_mut(&user) {
            let before = list.len();
            list.retain(|(i, _)| *i != id);
            if list.len() < before {
                metrics::gauge!("nebengjek_ws_connections").decrement(1.0);
            }
            if list.is_empty() {
                sockets.remove(&user);
            }
        }
    }

    /// Sends `frame` to every socket of `user` on this process; returns how many got it.
    pub fn push(&self, user: UserId, frame: &Value) -> usize {
        let mut sockets = self.lock();
        let Some(list) = sockets.get_mut(&user) else {
            return 0;
        };
        let mut delivered = 0;
        list.retain(|(_, tx)| match tx.try_send(frame.clone()) {
            Ok(()) => {
                delivered += 1;
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(user_id = %user, "socket too slow for its pushes; closing it");
                metrics::gauge!("nebengjek_ws_connections").decrement(1.0);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        if list.is_empty() {
            sockets.remove(&user);
        }
        delivered
    }

    /// Tells every session of this process to close (1001, going away), so that apps
    /// reconnect to another process; called when the process shuts down.
    pub fn close_all(&self) {
        self.shared.closing.send_replace(true);
    }

    /// Turns `true` when the process is going away.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.shared.closing.subscribe()
    }

    /// How many sockets `user` has here.
    pub fn sockets_of(&self, user: UserId) -> usize {
        self.lock().get(&user).map_or(0, Vec::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pushes_reach_every_socket_of_the_user_until_dropped() {
        let registry = Registry::default();
        let user = UserId::from_uuid(uuid::Uuid::now_v7());
        let other = UserId::from_uuid(uuid::Uuid::now_v7());
        let (a, mut rx_a) = registry.register(user);
        let (_b, mut rx_b) = registry.register(user);
        assert_eq!(registry.push(user, &json!({"type": "x"})), 2);
        assert_eq!(registry.push(other, &json!({"type": "x"})), 0);
        assert_eq!(rx_a.try_recv().unwrap()["type"], "x");
        assert_eq!(rx_b.try_recv().unwrap()["type"], "x");
        drop(a);
        assert_eq!(registry.sockets_of(user), 1);
        assert_eq!(registry.push(user, &json!({})), 1);
    }

    #[test]
    fn a_socket_that_does_not_keep_up_is_dropped() {
        let registry = Registry::default();
        let user = UserId::from_uuid(uuid::Uuid::now_v7());
        let (_reg, mut rx) = registry.register(user);
        for _ in 0..PUSH_BUFFER {
            assert_eq!(registry.push(user, &json!({})), 1);
        }
        assert_eq!(registry.push(user, &json!({})), 0);
        assert_eq!(registry.sockets_of(user), 0);
        // The session sees its channel end after the buffered pushes.
        let mut n = 0;
        while rx.try_recv().is_ok() {
            n += 1;
        }
        assert_eq!(n, PUSH_BUFFER);
    }
}
