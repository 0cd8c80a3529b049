//! The WebSocket API as one plain async function over the ports: [`WsApi::handle`] takes a
//! route (`$connect`, `$disconnect`, or a message) and answers it. The `ws` Lambda turns API
//! Gateway WebSocket events into [`WsRequest`]s; `ferry dev`'s local gateway turns frames
//! into the same. Replies to messages go out through the notifier (the Management API), as
//! live events do; nothing is ever posted from `$connect` (API Gateway answers 410 there).
//!
//! Client messages: `{"action": "subscribe", "job_id", "after_seq"?}`,
//! `{"action": "unsubscribe", "job_id"}`, `{"action": "ping"}`. Server messages:
//! `{"action": "subscribed", "job_id", "status", "last_seq"}` then replayed and live
//! `{"action": "event", "event"}` or, for several consecutive events coalesced into one
//! frame, `{"action": "events", "events": [...]}`; `{"action": "unsubscribed", "job_id"}`,
//! `{"action": "pong"}`,
//! and `{"action": "error", "error": {"type", "message", "field"?}}`.
//!
//! Ordering: the subscription is recorded before the replay is read, so no event is lost,
//! but a live event can overtake the `subscribed` reply or replayed events. Clients keep the
//! set of `seq`s they have seen, drop repeats, and order by `seq` (the CLI does).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::auth::{bearer_key, hash_api_key};
use crate::error::{ApiError, ErrorDetail};
use crate::job::{JobId, JobStatus};
use crate::ports::{ApiKeyStore, Connection, StoreError};
use crate::publish::{ProgressHub, frames};

/// API Gateway closes WebSocket connections after 2 hours.
pub const MAX_CONNECTION_MS: u64 = 2 * 3600 * 1000;
/// Client messages larger than this are refused (API Gateway's own cap is 128 KB).
pub const MAX_CLIENT_MESSAGE_BYTES: usize = 32 * 1024;
/// Events replayed per read on subscribe.
const REPLAY_PAGE: u32 = 100;

/// One WebSocket route invocation, independent of how it arrived.
#[derive(Debug, Clone, Default)]
pub struct WsRequest {
    /// `$connect`, `$disconnect`, `$default` or an action route key.
    pub route_key: String,
    pub connection_id: String,
    /// `Authorization` header, on `$connect`.
    pub authorization: Option<String>,
    /// `token` query parameter, on `$connect` (browsers cannot set headers on WebSockets).
    pub token: Option<String>,
    /// The message, for everything but `$connect` and `$disconnect`.
    pub body: Option<String>,
}

/// What the gateway should do with the invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsResponse {
    /// 200 accepts (`$connect`: the connection opens); 401 refuses a `$connect`.
    pub status: u16,
    pub body: String,
}

impl WsResponse {
    fn ok() -> Self {
        WsResponse { status: 200, body: String::new() }
    }
}

/// A message from a client.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
enum ClientMessage {
    Subscribe { job_id: String, after_seq: Option<u64> },
    Unsubscribe { job_id: String },
    // A struct variant, so `deny_unknown_fields` applies to it too.
    Ping {},
}

/// Replies other than events.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Reply {
    Subscribed { job_id: JobId, status: JobStatus, last_seq: u64 },
    Unsubscribed { job_id: JobId },
    Pong,
    Error { error: ErrorDetail },
}

/// The WebSocket API over the ports.
pub struct WsApi {
    pub hub: Arc<ProgressHub>,
    pub keys: Arc<dyn ApiKeyStore>,
}

impl WsApi {
    pub async fn handle(&self, req: WsRequest) -> WsResponse {
        match req.route_key.as_str() {
            "$connect" => self.connect(&req).await,
            "$disconnect" => {
                if let Err(e) = self.hub.connections.delete(&req.connection_id).await {
                    tracing::warn!(connection_id = %req.connection_id, error = %e, "disconnect cleanup failed");
                }
                WsResponse::ok()
            }
            _ => {
                let reply = self.message(&req).await;
                if let Some(reply) = reply {
                    self.send(&req.connection_id, &reply).await;
                }
                WsResponse::ok()
            }
        }
    }

    async fn connect(&self, req: &WsRequest) -> WsResponse {
        let key = req.authorization.as_deref().and_then(bearer_key).or(req.token.as_deref());
        let refuse = |m: &str| WsResponse { status: 401, body: error_json(&ApiError::unauthorized(m)) };
        let Some(key) = key else {
            return refuse("pass Authorization: Bearer <api key> or ?token=<api key>");
        };
        let tenant = match self.keys.lookup(&hash_api_key(key)).await {
            Ok(Some(r)) => r.tenant,
            Ok(None) => return refuse("invalid API key"),
            Err(e) => {
                tracing::error!(error = %e, "key lookup failed on $connect");
                return WsResponse { status: 500, body: error_json(&ApiError::internal(&req.connection_id)) };
            }
        };
        let now = self.hub.clock.now();
        let connection = Connection {
            id: req.connection_id.clone(),
            tenant,
            connected_at: now,
            expires_at: now + MAX_CONNECTION_MS,
        };
        match self.hub.connections.put(&connection).await {
            Ok(()) => WsResponse::ok(),
            Err(e) => {
                tracing::error!(error = %e, "recording a connection failed");
                WsResponse { status: 500, body: error_json(&ApiError::internal(&req.connection_id)) }
            }
        }
    }

    /// Handles a client message; returns the reply to post (None when already sent).
    async fn message(&self, req: &WsRequest) -> Option<Reply> {
        let body = req.body.as_deref().unwrap_or("");
        if body.len() > MAX_CLIENT_MESSAGE_BYTES {
            return Some(error_reply(
                ApiError::new(http::StatusCode::PAYLOAD_TOO_LARGE, "message too large").with_field("body"),
            ));
        }
        let value: Value = match serde_json::from_str(body) {
            Ok(v) => v,
            Err(e) => return Some(error_reply(ApiError::bad_request("body", format!("malformed JSON: {e}")))),
        };
        let msg: ClientMessage = match serde_json::from_value(value.clone()) {
            Ok(m) => m,
            Err(e) => {
                const ACTIONS: [&str; 3] = ["subscribe", "unsubscribe", "ping"];
                let known = value.get("action").and_then(Value::as_str).is_some_and(|a| ACTIONS.contains(&a));
                let field = if known { "body" } else { "action" };
                let hint = "actions: subscribe {job_id, after_seq?}, unsubscribe {job_id}, ping";
                return Some(error_reply(ApiError::bad_request(field, format!("{e}; {hint}"))));
            }
        };
        let connection = match self.hub.connections.get(&req.connection_id).await {
            Ok(Some(c)) => c,
            Ok(None) => {
                return Some(error_reply(ApiError::unauthorized("this connection is not registered; reconnect")));
            }
            Err(e) => return Some(self.internal(e, req)),
        };
        match msg {
            ClientMessage::Ping {} => Some(Reply::Pong),
            ClientMessage::Unsubscribe { job_id } => {
                let id = match parse_id(&job_id) {
                    Ok(id) => id,
                    Err(e) => return Some(error_reply(e)),
                };
                match self.hub.connections.unsubscribe(&req.connection_id, &id).await {
                    Ok(()) => Some(Reply::Unsubscribed { job_id: id }),
                    Err(e) => Some(self.internal(e, req)),
                }
            }
            ClientMessage::Subscribe { job_id, after_seq } => {
                let id = match parse_id(&job_id) {
                    Ok(id) => id,
                    Err(e) => return Some(error_reply(e)),
                };
                // Another tenant's job gets the answer a missing one gets.
                let job = match self.hub.jobs.get(&id).await {
                    Ok(Some(j)) if j.tenant == connection.tenant && j.retain_until > self.hub.clock.now() => j,
                    Ok(_) => return Some(error_reply(ApiError::job_not_found().with_field("job_id"))),
                    Err(e) => return Some(self.internal(e, req)),
                };
                // Subscribe first, then replay: an event stored in between is in the replay
                // or live (or both; clients drop seqs they have), never lost.
                if let Err(e) = self.hub.connections.subscribe(&req.connection_id, &id).await {
                    return Some(self.internal(e, req));
                }
                let ack = Reply::Subscribed { job_id: id, status: job.status, last_seq: job.last_seq };
                self.send(&req.connection_id, &ack).await;
                self.replay(&req.connection_id, &id, after_seq.unwrap_or(0)).await;
                None
            }
        }
    }

    /// Sends stored events after `after`, in order, page by page, several to a frame.
    async fn replay(&self, connection_id: &str, job_id: &JobId, mut after: u64) {
        loop {
            let last_seq = match self.hub.jobs.get(job_id).await {
                Ok(Some(j)) => j.last_seq,
                _ => return,
            };
            if last_seq <= after {
                return;
            }
            let events = match self.hub.events.read(job_id, after, last_seq, REPLAY_PAGE).await {
                Ok(e) if !e.is_empty() => e,
                _ => return,
            };
            after = events[events.len() - 1].seq;
            // Coalesced like live events: a page of tokens is a few posts, not hundreds.
            for data in frames(&events) {
                if self.hub.deliver(connection_id, &data).await.is_err() {
                    return;
                }
            }
        }
    }

    async fn send(&self, connection_id: &str, reply: &Reply) {
        let data = serde_json::to_vec(reply).unwrap_or_default();
        if let Err(e) = self.hub.deliver(connection_id, &data).await {
            tracing::info!(connection_id, error = %e, "reply not delivered");
        }
    }

    fn internal(&self, e: StoreError, req: &WsRequest) -> Reply {
        tracing::error!(connection_id = %req.connection_id, error = %e, "websocket request failed");
        error_reply(ApiError::internal(&req.connection_id))
    }
}

fn parse_id(s: &str) -> Result<JobId, ApiError> {
    s.parse().map_err(|_| ApiError::bad_request("job_id", "job_id must be a job id (a 26-character ULID)"))
}

fn error_reply(e: ApiError) -> Reply {
    Reply::Error { error: e.body().error }
}

fn error_json(e: &ApiError) -> String {
    serde_json::to_string(&e.body()).unwrap_or_default()
}
