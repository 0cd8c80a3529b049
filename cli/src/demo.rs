//! The demo job: what `ferry dev --demo` (and `ferry demo`) shows a new user, using only the
//! public API: list the models, submit a job, follow its progress live over the WebSocket
//! API until it finishes (tokens as they come), read it and list jobs; then submit a second
//! job and cancel it.

use std::io::Write;

use std::time::Duration;

use ferry_core::job::{JobStatus, Task};
use ferry_core::progress::EventBody;

use crate::client::Client;

/// Runs the demo against `client`, writing a readable transcript to `out`. Returns the
/// final status of the demo job.
pub async fn run(client: &Client, ws_url: Option<&str>, out: &mut (dyn Write + Send)) -> anyhow::Result<JobStatus> {
    let models = client.models().await?.body.models;
    writeln!(out, "models served:")?;
    for m in &models {
        writeln!(out, "  {:<24} {:<16} pool={}", m.id, m.task.as_str(), m.pool)?;
    }
    let model = models
        .iter()
        .find(|m| m.task == Task::TextGeneration)
        .or(models.first())
        .ok_or_else(|| anyhow::anyhow!("the catalog is empty"))?;
    let body = match model.task {
        Task::TextGeneration => serde_json::json!({
            "model": model.id,
            "input": {"prompt": "Write a haiku about ferries."},
            "params": {"max_new_tokens": 32, "temperature": 0.7, "seed": 42},
        }),
        Task::Embeddings => serde_json::json!({
            "model": model.id, "input": {"texts": ["ferries cross rivers", "boats float"]},
        }),
        Task::ImageEmbeddings => serde_json::json!({
            "model": model.id, "input": {"images": [demo_image()], "texts": ["a sunset over the sea"]},
        }),
        Task::Handler => serde_json::json!({"model": model.id, "input": {"topic": "ferries"}}),
    };
    // With a WebSocket API to follow, submit without waiting and watch the tokens arrive.
    let wait = if ws_url.is_some() { None } else { Some(1) };
    writeln!(out, "\nsubmitting to {}:\n  {body}", model.id)?;
    let submitted = client.submit(&body, Some(&format!("demo-{}", ulid::Ulid::new())), wait).await?;
    let job = submitted.body;
    writeln!(
        out,
        "-> HTTP {} job {} is {} (attempt {}/{})",
        submitted.status.as_u16(),
        job.id,
        job.status,
        job.attempt,
        job.max_attempts
    )?;
    let mut status = job.status;
    if !status.is_terminal() {
        match ws_url {
            Some(ws) => {
                writeln!(out, "following {} over {ws}:", job.id)?;
                let opts = crate::follow::FollowOptions::new(ws, client.api_key(), job.id.to_string());
                let mut line = String::new();
                let mut in_text = false;
                let follow = crate::follow::follow(&opts, |e| match &e.body {
                    EventBody::Token { text, .. } => {
                        if !in_text {
                            line.push_str("\n  tokens: ");
                            in_text = true;
                        }
                        line.push_str(text)
                    }
                    EventBody::Status { status, attempt } => {
                        in_text = false;
                        line.push_str(&format!("\n  [{}] status {status} (attempt {attempt})", e.seq))
                    }
                    EventBody::Log { message, .. } => {
                        in_text = false;
                        line.push_str(&format!("\n  [{}] {message}", e.seq))
                    }
                    _ => {}
                });
                status = tokio::time::timeout(Duration::from_secs(120), follow)
                    .await
                    .map_err(|_| anyhow::anyhow!("the demo job did not finish in 120 s"))??;
                writeln!(out, "{line}")?;
            }
            None => {
                status = client.get(&job.id.to_string()).await?.body.status;
            }
        }
    }
    let read = client.get(&job.id.to_string()).await?.body;
    writeln!(out, "GET /v1/jobs/{}: status {}, queue delay {} ms", read.id, read.status, read.queue_delay_ms)?;
    if let Some(output) = &read.output {
        writeln!(out, "output: {output}")?;
    }
    let listed = client.list(None, Some(5), None).await?.body;
    writeln!(out, "GET /v1/jobs: {} job(s) on the first page", listed.jobs.len())?;

    // A second job, cancelled at once: queued -> cancelled (200) or running -> cancelling (202).
    let second = client.submit(&body, None, None).await?.body;
    let cancelled = client.cancel(&second.id.to_string()).await?;
    writeln!(
        out,
        "submitted {} and cancelled it: POST /v1/jobs/{}/cancel -> HTTP {}: {}",
        second.id,
        second.id,
        cancelled.status.as_u16(),
        cancelled.body.status
    )?;
    writeln!(out, "the demo job finished: {status}")?;
    Ok(status)
}

/// A 64x48 gradient (an orange sky over a blue sea) as a `data:image/png;base64,` URI.
fn demo_image() -> String {
    use base64::Engine;
    use ferry_executor::models::image::{RgbImage, encode_png};
    let (width, height) = (64, 48);
    let data = (0..height)
        .flat_map(|y| {
            (0..width).flat_map(move |x| match y < height / 2 {
                true => [255, (120 + y * 4) as u8, (40 + x) as u8],
                false => [20, (60 + x) as u8, (140 + y * 2) as u8],
            })
        })
        .collect();
    let png = encode_png(&RgbImage { width, height, data });
    format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(png))
}
