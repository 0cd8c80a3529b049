//! The embeddings engine: one thread owns a loaded encoder ([`BertEmbedder`], or any
//! [`PassModel`]: CLIP's towers) and packs the inputs of every concurrent embeddings job
//! into shared forward passes.
//!
//! A job's inputs are checked and prepared on the job's own thread (tokenized:
//! [`Embedder::embed`]; decoded and preprocessed: [`Embedder::embed_items`]), then handed
//! to the engine, which loops:
//!
//! 1. takes every job that arrived; when it was idle and the first job alone does not fill
//!    a pass, it waits up to [`EmbedOptions::gather`] (a few ms) for others to join;
//! 2. ends the jobs whose [`Progress::stop_requested`] says so, with the vectors done so far
//!    (a prefix of their texts);
//! 3. builds one pass of at most [`EmbedOptions::max_texts`] texts: each running job gets an
//!    equal share first (so one job of thousands of texts does not hold back a job of one),
//!    then what is left is filled in arrival order; a job's texts go in input order;
//! 4. runs it packed (no padding: [`super::encoder`]), hands each job its vectors and
//!    percentage, and replies to the jobs that are complete.
//!
//! A pass that fails fails every job with texts in it ([`ModelError::Runtime`], retryable).
//! A text's vector does not depend on its pass mates (up to float rounding in the matmuls,
//! below 1e-5).

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokenizers::Encoding;

use super::bert::{BATCH_SIZE, BertEmbedder, vector_to_json};
use super::{ModelError, Progress, RunOutcome};

/// A model whose inputs are embedded each on its own (a vector does not depend on its pass
/// mates), so the engine may pack any jobs' inputs into one pass.
pub trait PassModel: Send + Sync + 'static {
    /// One input, ready for a pass (a tokenized text, a preprocessed image).
    type Item: Send + 'static;
    /// What progress messages count ("texts").
    const UNIT: &'static str;
    /// The vectors of `batch`, in its order.
    fn embed_batch(&self, batch: &[&Self::Item]) -> Result<Vec<Vec<f32>>, ModelError>;
    /// A job's output from its vectors (as JSON arrays).
    fn output(&self, vectors: Vec<Value>) -> Value;
}

impl PassModel for BertEmbedder {
    type Item = Encoding;
    const UNIT: &'static str = "texts";

    fn embed_batch(&self, batch: &[&Encoding]) -> Result<Vec<Vec<f32>>, ModelError> {
        BertEmbedder::embed_batch(self, batch)
    }

    fn output(&self, vectors: Vec<Value>) -> Value {
        BertEmbedder::output(self, vectors)
    }
}

/// How the engine gathers texts into passes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbedOptions {
    /// Texts in one forward pass at most.
    pub max_texts: usize,
    /// How long an idle engine waits for more jobs before running a pass the first does not
    /// fill.
    pub gather: Duration,
}

impl Default for EmbedOptions {
    fn default() -> Self {
        EmbedOptions { max_texts: BATCH_SIZE, gather: Duration::from_millis(2) }
    }
}

/// What the engine has done since it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EmbedStats {
    pub passes: u64,
    pub texts: u64,
    /// The most jobs one pass has carried texts of.
    pub peak_jobs: u64,
}

#[derive(Default)]
struct Counters {
    passes: AtomicU64,
    texts: AtomicU64,
    peak_jobs: AtomicU64,
}

/// A loaded encoder serving embeddings jobs through its engine thread.
pub struct Embedder<M: PassModel = BertEmbedder> {
    model: Arc<M>,
    options: EmbedOptions,
    requests: mpsc::Sender<Request<M::Item>>,
    counters: Arc<Counters>,
}

struct Request<I> {
    items: Vec<I>,
    progress: Arc<dyn Progress>,
    reply: mpsc::Sender<Result<RunOutcome, ModelError>>,
}

/// A job in the engine: its vectors so far (for its first `vectors.len()` inputs).
struct Job<I> {
    request: Request<I>,
    vectors: Vec<Value>,
}

impl<I> Job<I> {
    fn left(&self) -> usize {
        self.request.items.len() - self.vectors.len()
    }
}

impl Embedder<BertEmbedder> {
    /// Embeds `texts` (one job) beside whatever else runs: the output of
    /// [`BertEmbedder::embed`], or the vectors done so far when `progress` asks to stop.
    pub fn embed(&self, texts: &[String], progress: Arc<dyn Progress>) -> Result<RunOutcome, ModelError> {
        let encodings = self.model.tokenize(texts)?;
        self.embed_items(encodings, progress)
    }
}

impl<M: PassModel> Embedder<M> {
    /// Starts the engine thread for `model`.
    pub fn start(model: M, options: EmbedOptions) -> Result<Embedder<M>, ModelError> {
        let model = Arc::new(model);
        let (requests, inbox) = mpsc::channel();
        let counters = Arc::new(Counters::default());
        let engine = Engine { model: model.clone(), options: options.clone(), inbox, counters: counters.clone() };
        std::thread::Builder::new()
            .name("ferry-embed".into())
            .spawn(move || engine.run())
            .map_err(|e| ModelError::Load(format!("cannot start the embeddings engine thread: {e}")))?;
        Ok(Embedder { model, options, requests, counters })
    }

    /// The model (its dimensions, pooling, limits).
    pub fn model(&self) -> &M {
        &self.model
    }

    pub fn options(&self) -> &EmbedOptions {
        &self.options
    }

    pub fn stats(&self) -> EmbedStats {
        let c = &self.counters;
        EmbedStats {
            passes: c.passes.load(Ordering::Relaxed),
            texts: c.texts.load(Ordering::Relaxed),
            peak_jobs: c.peak_jobs.load(Ordering::Relaxed),
        }
    }

    /// Embeds one job's prepared `items` beside whatever else runs: [`PassModel::output`]
    /// of their vectors, or of the vectors done so far when `progress` asks to stop.
    pub fn embed_items(&self, items: Vec<M::Item>, progress: Arc<dyn Progress>) -> Result<RunOutcome, ModelError> {
        let (reply, outcome) = mpsc::channel();
        self.requests
            .send(Request { items, progress, reply })
            .map_err(|_| ModelError::Runtime("the embeddings engine has stopped".into()))?;
        outcome.recv().map_err(|_| ModelError::Runtime("the embeddings engine stopped during the job".into()))?
    }
}

struct Engine<M: PassModel> {
    model: Arc<M>,
    options: EmbedOptions,
    inbox: mpsc::Receiver<Request<M::Item>>,
    counters: Arc<Counters>,
}

impl<M: PassModel> Engine<M> {
    fn run(self) {
        let mut jobs: VecDeque<Job<M::Item>> = VecDeque::new();
        let max = self.options.max_texts.max(1);
        loop {
            if jobs.is_empty() {
                let Ok(first) = self.inbox.recv() else { return };
                jobs.push_back(Job { request: first, vectors: Vec::new() });
                // Idle until now: give concurrent jobs a moment to join the first pass.
                let until = Instant::now() + self.options.gather;
                while jobs.iter().map(Job::left).sum::<usize>() < max {
                    let wait = until.saturating_duration_since(Instant::now());
                    match self.inbox.recv_timeout(wait) {
                        Ok(r) => jobs.push_back(Job { request: r, vectors: Vec::new() }),
                        Err(_) => break,
                    }
                }
            }
            while let Ok(r) = self.inbox.try_recv() {
                jobs.push_back(Job { request: r, vectors: Vec::new() });
            }
            jobs.retain(|job| match job.request.progress.stop_requested() {
                Some(reason) => {
                    let partial = self.model.output(job.vectors.clone());
                    let _ = job.request.reply.send(Ok(RunOutcome::Stopped { reason, partial }));
                    false
                }
                None => true,
            });
            if jobs.is_empty() {
                continue;
            }
            let takes = shares(&jobs.iter().map(Job::left).collect::<Vec<_>>(), max);
            self.pass(&mut jobs, &takes);
        }
    }

    /// One forward pass over `takes[i]` texts of job `i`; replies to the jobs it completes
    /// (or fails).
    fn pass(&self, jobs: &mut VecDeque<Job<M::Item>>, takes: &[usize]) {
        let batch: Vec<&M::Item> = jobs
            .iter()
            .zip(takes)
            .flat_map(|(job, &take)| job.request.items[job.vectors.len()..][..take].iter())
            .collect();
        let in_pass = takes.iter().filter(|&&t| t > 0).count() as u64;
        self.counters.passes.fetch_add(1, Ordering::Relaxed);
        self.counters.texts.fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.counters.peak_jobs.fetch_max(in_pass, Ordering::Relaxed);
        let result = catch_unwind(AssertUnwindSafe(|| self.model.embed_batch(&batch)))
            .unwrap_or_else(|_| Err(ModelError::Runtime("the model panicked in a forward pass".into())))
            .and_then(|vectors| vectors.iter().map(|v| vector_to_json(v)).collect::<Result<Vec<_>, _>>());
        let mut vectors = match result {
            Ok(v) => v.into_iter(),
            Err(e) => {
                tracing::error!(error = %e, jobs = in_pass, "an embeddings pass failed");
                let mut i = 0;
                jobs.retain(|job| {
                    let keep = takes[i] == 0;
                    i += 1;
                    if !keep {
                        let _ = job.request.reply.send(Err(ModelError::Runtime(e.to_string())));
                    }
                    keep
                });
                return;
            }
        };
        for (job, &take) in jobs.iter_mut().zip(takes) {
            job.vectors.extend(vectors.by_ref().take(take));
            if take > 0 {
                let (done, total) = (job.vectors.len(), job.request.items.len());
                let unit = M::UNIT;
                job.request
                    .progress
                    .percentage(done as f32 / total as f32 * 100.0, Some(format!("{done}/{total} {unit}")));
            }
        }
        jobs.retain_mut(|job| {
            if job.left() > 0 {
                return true;
            }
            let output = self.model.output(std::mem::take(&mut job.vectors));
            let _ = job.request.reply.send(Ok(RunOutcome::Done(output)));
            false
        });
    }
}

/// How many texts each job (with `left[i]` texts to go, in arrival order) puts in a pass of
/// at most `max`: an equal share each first, then the rest in arrival order.
fn shares(left: &[usize], max: usize) -> Vec<usize> {
    let waiting = left.iter().filter(|&&n| n > 0).count().max(1);
    let fair = (max / waiting).max(1);
    let mut takes: Vec<usize> = left.iter().map(|&n| n.min(fair)).collect();
    let mut room = max.saturating_sub(takes.iter().sum());
    // More jobs than texts in a pass: the first `max` jobs get one each.
    if takes.iter().sum::<usize>() > max {
        let mut budget = max;
        for t in takes.iter_mut() {
            let give = (*t).min(budget);
            *t = give;
            budget -= give;
        }
        return takes;
    }
    for (t, &n) in takes.iter_mut().zip(left) {
        let more = (n - *t).min(room);
        *t += more;
        room -= more;
    }
    takes
}

#[cfg(test)]
mod tests {
    use super::shares;

    #[test]
    fn shares_are_fair_then_filled_in_order() {
        assert_eq!(shares(&[100], 32), [32]);
        assert_eq!(shares(&[1000, 1], 32), [31, 1]);
        assert_eq!(shares(&[1, 1000, 5], 32), [1, 26, 5]);
        assert_eq!(shares(&[20, 20], 32), [16, 16]);
        assert_eq!(shares(&[3, 4], 32), [3, 4]);
        assert_eq!(shares(&[1; 40], 32).iter().sum::<usize>(), 32);
        assert_eq!(&shares(&[1; 40], 32)[30..34], [1, 1, 0, 0]);
        assert_eq!(shares(&[0, 7], 4), [0, 4]);
    }
}
