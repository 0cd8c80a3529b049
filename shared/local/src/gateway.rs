//! The embedded `Notifier`: `ferry dev`'s local WebSocket gateway keeps its open
//! connections in a [`Registry`], and [`LocalNotifier`] posts straight into it, as the API
//! Gateway Management API posts to API Gateway's connections (same limits, same errors:
//! 410 for an unknown connection, a full send queue is `LimitExceeded`, a message over
//! 128 KiB is `PayloadTooLarge`). The gateway itself (sockets, the Management API over
//! HTTP) lives with `ferry dev`; it reads what to send from each connection's queue.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use ferry_core::job::Millis;
use ferry_core::ports::{Clock, Notifier, NotifyError, SystemClock};
use tokio::sync::{Notify, mpsc};

use crate::lock;

/// API Gateway's limit on one WebSocket message, both ways.
pub const MAX_MESSAGE_BYTES: usize = 128 * 1024;
/// Messages queued for one connection before posts to it answer LimitExceeded.
pub const SEND_QUEUE: usize = 1024;

/// What the gateway writes to a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    Text(String),
    Binary(Vec<u8>),
    Close { code: u16, reason: String },
}

/// One open connection: where its messages go, and what GetConnection reports.
struct Conn {
    tx: mpsc::Sender<Outbound>,
    connected_at: Millis,
    last_active_at: Millis,
    source_ip: String,
    user_agent: Option<String>,
}

/// The open connections, by connection id.
#[derive(Default)]
pub struct Registry {
    conns: std::sync::Mutex<HashMap<String, Conn>>,
    /// Socket tasks still running (they outlive their registry entry while closing).
    tasks: AtomicUsize,
    tasks_done: Notify,
}

/// What GetConnection answers for a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    pub connected_at: Millis,
    pub last_active_at: Millis,
    pub source_ip: String,
    pub user_agent: Option<String>,
}

/// Counts a running socket task while it lives.
pub struct TaskGuard(Arc<Registry>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.tasks.fetch_sub(1, Ordering::SeqCst);
        self.0.tasks_done.notify_waiters();
    }
}

impl Registry {
    /// Registers a connection. Its messages arrive on the returned receiver; the sender is
    /// the socket task's own, for the replies the gateway makes itself. The receiver ends
    /// once the connection is removed and that sender dropped.
    pub fn open(
        &self,
        id: &str,
        source_ip: String,
        user_agent: Option<String>,
    ) -> (mpsc::Sender<Outbound>, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(SEND_QUEUE);
        let now = SystemClock.now();
        let conn = Conn { tx: tx.clone(), connected_at: now, last_active_at: now, source_ip, user_agent };
        lock(&self.conns).insert(id.to_string(), conn);
        (tx, rx)
    }

    /// Counts a socket task until the guard is dropped ([`Registry::drained`] waits for them).
    pub fn task(self: &Arc<Self>) -> TaskGuard {
        self.tasks.fetch_add(1, Ordering::SeqCst);
        TaskGuard(self.clone())
    }

    /// Ids of the open connections.
    pub fn ids(&self) -> Vec<String> {
        lock(&self.conns).keys().cloned().collect()
    }

    pub fn len(&self) -> usize {
        lock(&self.conns).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains(&self, id: &str) -> bool {
        lock(&self.conns).contains_key(id)
    }

    /// Queues a message for a connection (PostToConnection).
    pub fn post(&self, id: &str, data: &[u8]) -> Result<(), NotifyError> {
        if data.len() > MAX_MESSAGE_BYTES {
            return Err(NotifyError::PayloadTooLarge);
        }
        let msg = match std::str::from_utf8(data) {
            Ok(s) => Outbound::Text(s.to_string()),
            Err(_) => Outbound::Binary(data.to_vec()),
        };
        let mut conns = lock(&self.conns);
        let Some(conn) = conns.get(id) else { return Err(NotifyError::Gone) };
        match conn.tx.try_send(msg) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(NotifyError::LimitExceeded),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                conns.remove(id);
                Err(NotifyError::Gone)
            }
        }
    }

    /// Closes a connection (DeleteConnection); false when it is not open.
    pub fn close(&self, id: &str, code: u16, reason: &str) -> bool {
        match lock(&self.conns).remove(id) {
            Some(conn) => {
                let _ = conn.tx.try_send(Outbound::Close { code, reason: reason.into() });
                true
            }
            None => false,
        }
    }

    /// Closes every connection (on shutdown).
    pub fn close_all(&self, code: u16, reason: &str) {
        for (_, conn) in lock(&self.conns).drain() {
            let _ = conn.tx.try_send(Outbound::Close { code, reason: reason.into() });
        }
    }

    /// Forgets a connection whose socket ended (no close frame is queued).
    pub fn remove(&self, id: &str) {
        lock(&self.conns).remove(id);
    }

    /// Waits (up to `limit`) until every socket task has finished.
    pub async fn drained(&self, limit: Duration) {
        let wait = async {
            loop {
                let notified = self.tasks_done.notified();
                if self.tasks.load(Ordering::SeqCst) == 0 {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(limit, wait).await;
    }

    /// GetConnection's answer.
    pub fn describe(&self, id: &str) -> Option<ConnectionInfo> {
        let conns = lock(&self.conns);
        let c = conns.get(id)?;
        Some(ConnectionInfo {
            connected_at: c.connected_at,
            last_active_at: c.last_active_at,
            source_ip: c.source_ip.clone(),
            user_agent: c.user_agent.clone(),
        })
    }

    /// Notes activity on a connection (a message from its client).
    pub fn touch(&self, id: &str) {
        if let Some(c) = lock(&self.conns).get_mut(id) {
            c.last_active_at = SystemClock.now();
        }
    }
}

/// The in-process notifier of the embedded backend: posts straight into the registry.
#[derive(Clone)]
pub struct LocalNotifier {
    pub registry: Arc<Registry>,
}

#[async_trait]
impl Notifier for LocalNotifier {
    async fn post(&self, connection_id: &str, data: &[u8]) -> Result<(), NotifyError> {
        self.registry.post(connection_id, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn posts_reach_open_connections_only() {
        let registry = Arc::new(Registry::default());
        let notifier = LocalNotifier { registry: registry.clone() };
        let (_, mut rx) = registry.open("c1", "127.0.0.1".into(), None);
        notifier.post("c1", b"{\"a\":1}").await.unwrap();
        assert_eq!(rx.recv().await, Some(Outbound::Text("{\"a\":1}".into())));
        assert_eq!(notifier.post("nope", b"x").await, Err(NotifyError::Gone));
        let big = vec![b'x'; MAX_MESSAGE_BYTES + 1];
        assert_eq!(notifier.post("c1", &big).await, Err(NotifyError::PayloadTooLarge));
        for _ in 0..SEND_QUEUE {
            notifier.post("c1", b"x").await.unwrap();
        }
        assert_eq!(notifier.post("c1", b"x").await, Err(NotifyError::LimitExceeded), "a full queue");
        assert!(registry.close("c1", 1000, ""));
        assert_eq!(notifier.post("c1", b"x").await, Err(NotifyError::Gone));
        drop(rx);
        let (tx2, rx2) = registry.open("c2", "::1".into(), Some("ua".into()));
        drop((tx2, rx2));
        assert_eq!(notifier.post("c2", b"x").await, Err(NotifyError::Gone), "a closed socket is gone");
        assert!(!registry.contains("c2"));
    }
}
