//! The demo job: what `ferry dev --demo` (and `ferry demo`) shows a new user, using only the
//! public API: list the models, submit a job, read it, list jobs, cancel it.

use std::io::Write;

use ferry_core::job::{JobStatus, Task};

use crate::client::Client;

/// Runs the demo against `client`, writing a readable transcript to `out`. Returns the
/// final status of the demo job.
pub async fn run(client: &Client, out: &mut (dyn Write + Send)) -> anyhow::Result<JobStatus> {
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
    };
    writeln!(out, "\nsubmitting to {} (Prefer: wait=1):\n  {body}", model.id)?;
    let submitted = client.submit(&body, Some(&format!("demo-{}", ulid::Ulid::new())), Some(1)).await?;
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
    let read = client.get(&job.id.to_string()).await?.body;
    writeln!(out, "GET /v1/jobs/{}: status {}, queue delay {} ms", read.id, read.status, read.queue_delay_ms)?;
    let listed = client.list(None, Some(5), None).await?.body;
    writeln!(out, "GET /v1/jobs: {} job(s) on the first page", listed.jobs.len())?;
    if read.status.is_terminal() {
        writeln!(out, "the job finished: {}", read.status)?;
        return Ok(read.status);
    }
    let cancelled = client.cancel(&job.id.to_string()).await?;
    writeln!(out, "POST /v1/jobs/{}/cancel -> HTTP {}: {}", job.id, cancelled.status.as_u16(), cancelled.body.status)?;
    writeln!(out, "\n(no executor runs in this stack yet, so the job waited in the queue until cancelled)")?;
    Ok(cancelled.body.status)
}
