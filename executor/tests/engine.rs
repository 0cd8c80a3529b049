//! The batching engine through its public door, [`Generator::generate`], with many jobs at
//! once on one loaded model (a small random Llama with a long context): every job gets the
//! tokens it gets alone (greedy, and seeded sampling), whatever runs beside it; a cancel or a
//! timeout of one job ends it at the next step and leaves the others unchanged; a job that
//! arrives while others decode starts at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use ferry_core::input::{InputLimits, TextGenerationParams};
use ferry_executor::models::generate::{EngineOptions, Generator};
use ferry_executor::models::{Placement, Progress, RunOutcome, StopReason, TokenOut, llama};
use ferry_executor::testing::ScratchDir;
use ferry_executor::tiny::{TinyConfig, write_llama};
use serde_json::{Value, json};

/// The tiny model's width with a context long enough for long jobs.
const SHAPE: TinyConfig = TinyConfig {
    hidden_size: 64,
    intermediate_size: 128,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    max_position_embeddings: 1024,
};

const WORDS: &[&str] =
    &["the", "ferry", "crossed", "a", "river", "of", "time", "and", "water", "people", "came", "to", "see", "it", "go"];

/// A prompt of `n` words (a few more tokens), different for each `i`.
fn prompt(i: usize, n: usize) -> String {
    (0..n).map(|k| WORDS[(i * 7 + k * 3) % WORDS.len()]).collect::<Vec<_>>().join(" ")
}

fn params(v: Value) -> TextGenerationParams {
    let caps = InputLimits { max_new_tokens: u32::MAX, max_texts: u32::MAX };
    TextGenerationParams::parse(v.as_object().unwrap(), &caps).unwrap()
}

struct Model {
    _dir: ScratchDir,
    batched: Generator,
    alone: Generator,
}

/// The same weights behind two engines: one batching up to 32 sequences, one serving a
/// single sequence at a time (the reference: every job alone).
fn model(seed: u64) -> Model {
    let dir = ScratchDir::new("ferry-engine-test").unwrap();
    write_llama(dir.path(), seed, SHAPE).unwrap();
    let cpu = Placement { device: Device::Cpu, dtype: DType::F32 };
    let options = |n| EngineOptions { max_sequences: n, ..EngineOptions::for_device(&Device::Cpu) };
    let batched = llama::load_with(dir.path(), &cpu, options(32)).unwrap();
    let alone = llama::load_with(dir.path(), &cpu, options(1)).unwrap();
    Model { _dir: dir, batched, alone }
}

/// Records a job's tokens (with when each came); asks to stop with `stop` once it has
/// `stop_after` tokens; sleeps `per_token` in each report, on the engine's thread, which
/// slows every pass as a bigger model would.
#[derive(Default)]
struct Job {
    tokens: Mutex<Vec<(TokenOut, Instant)>>,
    count: AtomicUsize,
    stop: Option<(usize, StopReason)>,
    per_token: Duration,
}

impl Job {
    fn stopping(after: usize, reason: StopReason) -> Job {
        Job { stop: Some((after, reason)), ..Job::default() }
    }
    fn slow(per_token: Duration) -> Job {
        Job { per_token, ..Job::default() }
    }
    fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
    /// When the n-th token (1-based) was reported.
    fn at(&self, n: usize) -> Instant {
        self.tokens.lock().unwrap()[n - 1].1
    }
}

impl Progress for Job {
    fn token(&self, token: TokenOut) {
        self.tokens.lock().unwrap().push((token, Instant::now()));
        self.count.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(self.per_token);
    }
    fn percentage(&self, _: f32, _: Option<String>) {}
    fn stop_requested(&self) -> Option<StopReason> {
        let (n, reason) = self.stop?;
        (self.count() >= n).then_some(reason)
    }
}

fn ids(out: &Value) -> Vec<u32> {
    out["token_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect()
}

fn done(outcome: RunOutcome) -> Value {
    match outcome {
        RunOutcome::Done(v) => v,
        other => panic!("expected Done, got {other:?}"),
    }
}

/// Runs every (prompt, params, progress) at once on `engine`, each on its own thread (as the
/// executor's jobs do), released together; their outcomes in order.
fn all_at_once(engine: &Generator, jobs: Vec<(String, TextGenerationParams, Arc<Job>)>) -> Vec<RunOutcome> {
    let start = Barrier::new(jobs.len());
    std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .into_iter()
            .map(|(prompt, params, job)| {
                let start = &start;
                s.spawn(move || {
                    start.wait();
                    engine.generate(&prompt, &params, job).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// 32 jobs of mixed prompt lengths and lengths: the mix of prompts and max_new_tokens.
fn mixed(i: usize) -> (String, Value) {
    (prompt(i, 1 + (i * 13) % 40), json!({"max_new_tokens": 20 + (i * 17) % 60}))
}

#[test]
fn thirty_two_concurrent_jobs_get_the_greedy_ids_they_get_alone() {
    let m = model(5);
    let alone: Vec<Value> = (0..32)
        .map(|i| {
            let (p, v) = mixed(i);
            done(m.alone.generate(&p, &params(v), Arc::new(Job::default())).unwrap())
        })
        .collect();
    let jobs = (0..32).map(mixed).map(|(p, v)| (p, params(v), Arc::new(Job::default()))).collect();
    let together = all_at_once(&m.batched, jobs);
    for (i, (a, t)) in alone.iter().zip(together).enumerate() {
        let t = done(t);
        assert_eq!(ids(&t), ids(a), "job {i}: batched ids differ from alone");
        assert_eq!(t["text"], a["text"], "job {i}");
        assert_eq!(t["details"]["finish_reason"], "length");
        assert_eq!(ids(&t).len(), 20 + (i * 17) % 60);
    }
    // They really ran together: passes carried many sequences, and far fewer passes ran
    // than tokens were made.
    let stats = m.batched.stats();
    assert!(stats.peak_batch >= 16, "{stats:?}");
    assert!(stats.passes * 4 < stats.tokens, "{stats:?}");
    assert_eq!(m.alone.stats().peak_batch, 1);
}

#[test]
fn seeded_sampling_gives_the_same_tokens_whatever_runs_beside_it() {
    let m = model(6);
    let sampled =
        |i: usize| json!({"max_new_tokens": 40, "temperature": 0.9, "top_p": 0.95, "top_k": 40, "seed": 1000 + i});
    let alone: Vec<Vec<u32>> = (0..8)
        .map(|i| {
            ids(&done(m.alone.generate(&prompt(i, 5 + i), &params(sampled(i)), Arc::new(Job::default())).unwrap()))
        })
        .collect();
    // Beside greedy jobs, and beside other sampled jobs with other seeds and penalties.
    for mates in [
        json!({"max_new_tokens": 30}),
        json!({"max_new_tokens": 50, "temperature": 1.3, "seed": 7, "repetition_penalty": 1.2}),
    ] {
        let mut jobs: Vec<_> =
            (0..8).map(|i| (prompt(i, 5 + i), params(sampled(i)), Arc::new(Job::default()))).collect();
        jobs.extend((0..16).map(|i| (prompt(i + 50, 3 + i), params(mates.clone()), Arc::new(Job::default()))));
        let outs = all_at_once(&m.batched, jobs);
        for (i, want) in alone.iter().enumerate() {
            assert_eq!(&ids(&done(outs[i].clone())), want, "sampled job {i} beside {mates}");
        }
    }
    // The seed matters (the test would pass trivially if sampling ignored it).
    assert_ne!(
        alone[0],
        ids(&done(m.alone.generate(&prompt(0, 5), &params(sampled(99)), Arc::new(Job::default())).unwrap()))
    );
}

/// One job of eight asks to stop (`reason`) after 5 tokens: it ends at the next step with
/// those 5 tokens, well within a second, and the others' outputs are what they are alone.
fn one_job_stops_mid_batch(reason: StopReason) {
    let m = model(7);
    let job = |i: usize| (prompt(i, 4 + i), json!({"max_new_tokens": 300}));
    let alone: Vec<Vec<u32>> = (0..8)
        .map(|i| {
            let (p, v) = job(i);
            ids(&done(m.alone.generate(&p, &params(v), Arc::new(Job::default())).unwrap()))
        })
        .collect();
    let stopping = Arc::new(Job::stopping(5, reason));
    let progress: Vec<Arc<Job>> = (0..8)
        .map(|i| if i == 3 { stopping.clone() } else { Arc::new(Job::slow(Duration::from_micros(300))) })
        .collect();
    let jobs = (0..8).map(|i| (job(i).0, params(job(i).1), progress[i].clone()));
    let start = Barrier::new(8);
    let (outs, stopped_at) = std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .map(|(p, v, job)| {
                let (start, engine) = (&start, &m.batched);
                s.spawn(move || {
                    start.wait();
                    let out = engine.generate(&p, &v, job).unwrap();
                    (out, Instant::now())
                })
            })
            .collect();
        let outs: Vec<(RunOutcome, Instant)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let stopped_at = outs[3].1;
        (outs.into_iter().map(|(o, _)| o).collect::<Vec<_>>(), stopped_at)
    });
    let RunOutcome::Stopped { reason: got, partial } = &outs[3] else { panic!("job 3 was not stopped: {:?}", outs[3]) };
    assert_eq!(*got, reason);
    assert_eq!(ids(partial), alone[3][..5], "the partial output is the first 5 tokens");
    assert_eq!(partial["details"]["generated_tokens"], 5);
    let took = stopped_at - stopping.at(5);
    assert!(took < Duration::from_secs(1), "the stop took {took:?}");
    for (i, out) in outs.iter().enumerate().filter(|(i, _)| *i != 3) {
        let out = done(out.clone());
        assert_eq!(ids(&out), alone[i], "job {i} changed when job 3 stopped");
        // They were still running when job 3 ended.
        assert!(progress[i].at(300) > stopped_at, "job {i} had ended before job 3 stopped");
    }
}

#[test]
fn a_cancel_mid_batch_ends_that_job_only() {
    one_job_stops_mid_batch(StopReason::Cancelled);
}

#[test]
fn a_timeout_mid_batch_ends_that_job_only() {
    one_job_stops_mid_batch(StopReason::TimedOut);
}

#[test]
fn a_job_arriving_mid_batch_starts_without_waiting() {
    let m = model(8);
    let long: Vec<Arc<Job>> = (0..8).map(|_| Arc::new(Job::slow(Duration::from_micros(500)))).collect();
    std::thread::scope(|s| {
        for (i, job) in long.iter().enumerate() {
            let (job, engine) = (job.clone(), &m.batched);
            s.spawn(move || {
                let out = done(engine.generate(&prompt(i, 6), &params(json!({"max_new_tokens": 400})), job).unwrap());
                assert_eq!(ids(&out).len(), 400);
            });
        }
        while long.iter().any(|j| j.count() < 10) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let short = Arc::new(Job::default());
        let submitted = Instant::now();
        let out =
            done(m.batched.generate(&prompt(99, 12), &params(json!({"max_new_tokens": 5})), short.clone()).unwrap());
        assert_eq!(ids(&out).len(), 5);
        // It was admitted beside the long ones: its first token came while they all still
        // decode, and it finished long before them.
        let first = short.at(1);
        for (i, j) in long.iter().enumerate() {
            assert!(j.count() < 400, "long job {i} ended before the short one did");
        }
        let waited = long[0].tokens.lock().unwrap().iter().filter(|(_, at)| *at > submitted && *at < first).count();
        assert!(waited <= 3, "the short job waited {waited} decode steps of the others for its first token");
        assert!(m.batched.stats().peak_batch >= 9, "{:?}", m.batched.stats());
    });
}
