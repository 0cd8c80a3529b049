//! Following a job over a WebSocket as a client does, for the end-to-end tests.

use std::time::Duration;

use ferry_core::progress::ProgressEvent;
use ferry_core::publish::ServerMessage;
use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

/// The events `ws` delivers (replies skipped) up to the job's final status event, within
/// `limit` (a panic past it).
pub async fn events_until_final<S>(ws: &mut S, limit: Duration) -> Vec<ProgressEvent>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next()).await.expect("the job finishes in time");
        let Some(Ok(Message::Text(text))) = msg else { continue };
        let v: Value = serde_json::from_str(&text).unwrap();
        if v["action"] == "subscribed" || v["action"] == "pong" {
            continue;
        }
        for e in serde_json::from_value::<ServerMessage>(v).expect("an event frame").into_events() {
            let last = e.body.is_final();
            events.push(e);
            if last {
                return events;
            }
        }
    }
}
