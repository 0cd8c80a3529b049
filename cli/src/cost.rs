//! `ferry cost`: what a pool costs a day when it scales to zero, against keeping executors on.
//!
//! # The model
//!
//! Jobs arrive as a Poisson process at rate λ = N / 86400 per second (N jobs a day). Each runs
//! S seconds when it has the executor to itself; an executor serves up to c = `jobs_per_task`
//! jobs at once (the engine's batch capacity), and with c jobs running its aggregate
//! throughput is F = `batch_speedup` times one job's alone (measured: benches/engine.sh; when
//! not given, F = c is assumed, perfect batching, and the output says so). An executor costs
//! `hourly_price` per hour while it runs (boot and idle time included).
//!
//! **Always on.** Enough executors to carry the load, never fewer than one or than `min_warm`:
//! k = max(1, min_warm, ⌈N·S / (86400 · F)⌉), billed 24 h: cost = k · 24 · price.
//!
//! **Busy time.** B = min(N·S, k·86400) with k = max(1, ⌈N·S / (86400 · F)⌉): jobs take their
//! time alone until that is more than the k executors the load needs have all day; past it the
//! executors are full and their batches absorb the excess (an upper bound: overlapping jobs
//! batch before that too).
//!
//! **Scale to zero** (`min_warm` = 0), a single-executor approximation per job: after a job the
//! executor waits idle up to T = `idle_timeout_s`; the next arrival comes after an exponential
//! gap G. Per job:
//!
//! - billed idle time E[min(G, T)] = (1 − e^{−λT}) / λ;
//! - the next job finds no executor (a cold start) with probability e^{−λT};
//! - a cold start bills C = `cold_start_s` (instance boot, image pull, model load) and adds C
//!   of latency to the job that waits for it.
//!
//! Billed executor-seconds a day = B + min(N·(1 − e^{−λT})/λ, k·86400 − B) + N·e^{−λT}·C: the
//! idle term is counted per job but never more than the spare time of the k executors the load
//! needs (jobs that overlap share their idle tails). Queueing is ignored: a job arriving while
//! the executor is busy is assumed to find a slot, so at heavy load the idle term tends to the
//! always-on fleet's spare time (at most one executor-day) and the cost to the always-on cost.
//!
//! **`min_warm` ≥ 1.** The warm executors are billed all day and there are no cold starts from
//! zero: billed = min_warm · 86400 + max(0, B − min_warm · 86400). Executors
//! started above `min_warm` are billed their busy time only (their idle time and cold starts are
//! not counted), so past the warm capacity this is a lower bound.
//!
//! Neither figure is capped by the other: with many cold starts scale to zero can cost more than
//! always on, and the estimate says which is cheaper. The break-even N is where the two daily
//! costs are equal for the same S, T and C, found by bisection over N in (0, 86400 · F / S]
//! (the range one always-on executor carries); none when scale to zero is cheaper throughout.
//! Fixed costs of a deployment (NAT gateway, load balancers, storage) are not included: see
//! docs/COST.md and docs/DEPLOY.md.

use std::path::PathBuf;

use anyhow::{Context, anyhow, bail};
use ferry_core::pool::{PoolConfig, Pools};
use serde::Serialize;

/// Seconds in a day.
const DAY: f64 = 86_400.0;
/// Days in the monthly figures.
const MONTH_DAYS: f64 = 30.0;
/// Cold start when neither the flag nor the pool says.
const DEFAULT_COLD_START_S: f64 = 90.0;

/// `ferry cost`: estimate what a pool costs a day, scaled to zero and always on.
#[derive(clap::Args, Debug, Clone)]
pub struct CostArgs {
    /// Jobs a day (their mean; arrivals are modelled as a Poisson process).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub jobs_per_day: f64,
    /// Seconds one job runs on an executor.
    #[arg(long, value_name = "S", allow_negative_numbers = true)]
    pub job_seconds: f64,
    /// The pool whose settings to use (pools absent from the configuration get the defaults).
    #[arg(long, value_name = "NAME", default_value = "gpu")]
    pub pool: String,
    /// Pools configuration file; wins over FERRY_POOLS, read otherwise.
    #[arg(long, value_name = "PATH", env = "FERRY_POOLS_FILE")]
    pub pools_file: Option<PathBuf>,
    /// On-demand price of one executor per hour (USD); overrides the pool's `hourly_price`.
    #[arg(long, value_name = "USD", allow_negative_numbers = true)]
    pub hourly_price: Option<f64>,
    /// Seconds from launch to a ready executor; overrides the pool's `cold_start_s` (default 90).
    #[arg(long, value_name = "SECS", allow_negative_numbers = true)]
    pub cold_start_s: Option<f64>,
    /// Seconds an idle executor waits before it exits; overrides the pool's `idle_timeout_s`.
    #[arg(long, value_name = "SECS", allow_negative_numbers = true)]
    pub idle_timeout_s: Option<f64>,
    /// Executors kept running with an empty queue; overrides the pool's `min_warm`.
    #[arg(long, value_name = "N")]
    pub min_warm: Option<u32>,
    /// Jobs one executor serves at once; overrides the pool's `jobs_per_task` (which defaults
    /// to the engine's batch capacity: 32 on CPU, 64 on CUDA).
    #[arg(long, value_name = "N")]
    pub jobs_per_task: Option<u32>,
    /// Aggregate throughput of an executor running `jobs_per_task` jobs at once, as a multiple
    /// of one job alone (measure it: benches/engine.sh prints it). Default: `jobs_per_task`,
    /// perfect batching, an optimistic assumption the output points out.
    #[arg(long, value_name = "X", allow_negative_numbers = true)]
    pub batch_speedup: Option<f64>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// What the estimate needs, every value resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct CostInput {
    pub pool: String,
    pub jobs_per_day: f64,
    pub job_seconds: f64,
    pub hourly_price: f64,
    pub idle_timeout_s: f64,
    pub cold_start_s: f64,
    pub min_warm: u32,
    pub jobs_per_task: u32,
    /// F: a full executor's aggregate throughput over one job's alone (1 ≤ F ≤ jobs_per_task).
    pub batch_speedup: f64,
    /// Whether F was given (measured) rather than assumed equal to `jobs_per_task`.
    pub batch_speedup_measured: bool,
}

/// Which way of running the pool costs less.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cheaper {
    ScaleToZero,
    AlwaysOn,
}

/// The estimate, as `ferry cost --json` prints it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CostEstimate {
    pub jobs_per_day: f64,
    pub job_seconds: f64,
    pub pool: String,
    pub hourly_price: f64,
    pub idle_timeout_s: f64,
    pub cold_start_s: f64,
    pub min_warm: u32,
    pub jobs_per_task: u32,
    pub batch_speedup: f64,
    /// `false` when `batch_speedup` is the assumed `jobs_per_task` rather than a measurement.
    pub batch_speedup_measured: bool,
    /// Executor hours a day the jobs keep busy, batched (B / 3600).
    pub executor_busy_hours_per_day: f64,
    /// Hours a day jobs actually run (N·S / 3600).
    pub busy_hours_per_day: f64,
    pub billed_hours_scale_to_zero: f64,
    pub billed_hours_always_on: f64,
    pub cost_per_day_scale_to_zero: f64,
    pub cost_per_day_always_on: f64,
    pub cost_per_month_scale_to_zero: f64,
    pub cost_per_month_always_on: f64,
    pub always_on_executors: u64,
    pub cold_starts_per_day: f64,
    /// The fraction of jobs that wait for a cold start.
    pub p_cold_start: f64,
    /// p_cold_start · cold_start_s: the latency scale to zero adds to the mean job.
    pub mean_added_latency_s: f64,
    /// 1 − scale-to-zero cost / always-on cost (negative when scale to zero costs more).
    pub savings_fraction: f64,
    /// Jobs a day at which both cost the same; `null` when scale to zero is cheaper throughout.
    pub break_even_jobs_per_day: Option<f64>,
    pub cheaper: Cheaper,
}

/// Always-on executors for `n` jobs a day.
fn always_on_executors(input: &CostInput, n: f64) -> f64 {
    // The small allowance keeps a load of exactly k executors (up to rounding) at k.
    needed_executors(input, n).max(input.min_warm as f64)
}

/// Executors the load keeps busy: k = max(1, ⌈N·S / (86400 · F)⌉).
fn needed_executors(input: &CostInput, n: f64) -> f64 {
    (n * input.job_seconds / (DAY * input.batch_speedup) - 1e-9).ceil().max(1.0)
}

/// Executor-seconds a day that `n` jobs keep busy: their time alone, N·S, until that exceeds
/// what the k executors they need have (k·86400); past it the executors are full and batch
/// the excess (so k·86400 ≥ N·S / F).
fn busy_seconds(input: &CostInput, n: f64) -> f64 {
    (n * input.job_seconds).min(needed_executors(input, n) * DAY)
}

/// Billed executor-seconds a day and cold starts a day when the pool scales to zero.
fn scale_to_zero(input: &CostInput, n: f64) -> (f64, f64) {
    let busy = busy_seconds(input, n);
    if input.min_warm >= 1 {
        let warm = input.min_warm as f64;
        return (warm * DAY + (busy - warm * DAY).max(0.0), 0.0);
    }
    let lambda = n / DAY;
    let x = lambda * input.idle_timeout_s;
    let p_cold = (-x).exp();
    // (1 − e^{−λT}) / λ, written with exp_m1 so that small λT keeps its precision.
    let idle_per_job = -(-x).exp_m1() / lambda;
    // Idle time is what the executors the load needs are on and not busy: never more than
    // the spare time of the always-on fleet (jobs that overlap in a batch share their tails).
    let spare = (always_on_executors(input, n) * DAY - busy).max(0.0);
    let idle = (n * idle_per_job).min(spare);
    let cold_starts = n * p_cold;
    (busy + idle + cold_starts * input.cold_start_s, cold_starts)
}

/// Scale-to-zero cost minus always-on cost, per day, at `n` jobs a day.
fn cost_gap(input: &CostInput, n: f64) -> f64 {
    let hour = input.hourly_price / 3600.0;
    scale_to_zero(input, n).0 * hour - always_on_executors(input, n) * DAY * hour
}

/// The smallest N in (0, 86400·slots/S] where scale to zero starts costing more than always on,
/// if any. Costs equal within rounding count as scale to zero not costing more.
fn break_even(input: &CostInput) -> Option<f64> {
    let n_max = DAY * input.batch_speedup / input.job_seconds;
    let tolerance = 1e-9 * always_on_executors(input, n_max) * DAY * input.hourly_price / 3600.0;
    let dearer = |n: f64| cost_gap(input, n) > tolerance;
    // A coarse scan first (the cold-start term is not monotonic in N), then bisection.
    const STEPS: usize = 4096;
    let mut lo = 0.0;
    let mut hi = None;
    for i in 1..=STEPS {
        let n = n_max * i as f64 / STEPS as f64;
        if dearer(n) {
            hi = Some(n);
            break;
        }
        lo = n;
    }
    let mut hi = hi?;
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if cost_gap(input, mid) >= 0.0 {
            hi = mid;
        } else {
            lo = mid;
        }
        if hi - lo <= 1e-13 * hi {
            break;
        }
    }
    Some(0.5 * (lo + hi))
}

/// The estimate for `input` (see the module documentation for the model).
pub fn estimate(input: &CostInput) -> CostEstimate {
    let n = input.jobs_per_day;
    let hour = input.hourly_price / 3600.0;
    let (billed_s2z, cold_starts) = scale_to_zero(input, n);
    let executors = always_on_executors(input, n);
    let billed_ao = executors * DAY;
    let cost_s2z = billed_s2z * hour;
    let cost_ao = billed_ao * hour;
    let p_cold = if n > 0.0 { cold_starts / n } else { 0.0 };
    CostEstimate {
        jobs_per_day: n,
        job_seconds: input.job_seconds,
        pool: input.pool.clone(),
        hourly_price: input.hourly_price,
        idle_timeout_s: input.idle_timeout_s,
        cold_start_s: input.cold_start_s,
        min_warm: input.min_warm,
        jobs_per_task: input.jobs_per_task,
        batch_speedup: input.batch_speedup,
        batch_speedup_measured: input.batch_speedup_measured,
        executor_busy_hours_per_day: busy_seconds(input, n) / 3600.0,
        busy_hours_per_day: n * input.job_seconds / 3600.0,
        billed_hours_scale_to_zero: billed_s2z / 3600.0,
        billed_hours_always_on: billed_ao / 3600.0,
        cost_per_day_scale_to_zero: cost_s2z,
        cost_per_day_always_on: cost_ao,
        cost_per_month_scale_to_zero: cost_s2z * MONTH_DAYS,
        cost_per_month_always_on: cost_ao * MONTH_DAYS,
        always_on_executors: executors as u64,
        cold_starts_per_day: cold_starts,
        p_cold_start: p_cold,
        mean_added_latency_s: p_cold * input.cold_start_s,
        savings_fraction: 1.0 - cost_s2z / cost_ao,
        break_even_jobs_per_day: break_even(input),
        cheaper: if cost_s2z < cost_ao { Cheaper::ScaleToZero } else { Cheaper::AlwaysOn },
    }
}

/// `ferry cost`: the text (or JSON) to print.
pub fn run(args: &CostArgs) -> anyhow::Result<String> {
    run_with(args, |k| std::env::var(k).ok())
}

/// [`run`] with the environment given (`FERRY_POOLS`, `FERRY_POOLS_FILE`).
pub fn run_with(args: &CostArgs, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<String> {
    let input = resolve(args, env)?;
    let estimate = estimate(&input);
    if args.json { Ok(serde_json::to_string_pretty(&estimate)?) } else { Ok(render(&estimate)) }
}

fn positive(flag: &str, value: f64) -> anyhow::Result<f64> {
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        bail!("{flag} must be a finite number greater than 0 (got {value})")
    }
}

fn non_negative(flag: &str, value: f64) -> anyhow::Result<f64> {
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        bail!("{flag} must be a finite number, 0 or more (got {value})")
    }
}

/// The flags, checked, over the pool's configuration (`--pools-file`, else `FERRY_POOLS` or
/// `FERRY_POOLS_FILE` from `env`).
pub fn resolve(args: &CostArgs, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<CostInput> {
    let jobs_per_day = positive("--jobs-per-day", args.jobs_per_day)?;
    let job_seconds = positive("--job-seconds", args.job_seconds)?;
    if let Some(v) = args.hourly_price {
        positive("--hourly-price", v)?;
    }
    if let Some(v) = args.cold_start_s {
        non_negative("--cold-start-s", v)?;
    }
    if let Some(v) = args.idle_timeout_s {
        non_negative("--idle-timeout-s", v)?;
    }
    if let Some(v) = args.batch_speedup {
        positive("--batch-speedup", v)?;
    }
    if args.jobs_per_task == Some(0) {
        bail!("--jobs-per-task must be 1 or more (got 0)");
    }
    let pools = match &args.pools_file {
        Some(path) => Pools::from_file(path).with_context(|| format!("reading --pools-file {}", path.display()))?,
        None => Pools::from_lookup(env).context("reading the pools configuration (FERRY_POOLS)")?,
    };
    let pool = pools.get(&args.pool).cloned().unwrap_or_else(|| PoolConfig::named(&args.pool));
    let hourly_price = args.hourly_price.or(pool.hourly_price).ok_or_else(|| {
        anyhow!(
            "no hourly price for pool {:?}: pass --hourly-price USD (one executor's on-demand price \
             per hour) or set hourly_price in the pool configuration",
            pool.name
        )
    })?;
    let hourly_price = positive("--hourly-price (or the pool's hourly_price)", hourly_price)?;
    let cold_start_s = non_negative(
        "--cold-start-s (or the pool's cold_start_s)",
        args.cold_start_s.or(pool.cold_start_s).unwrap_or(DEFAULT_COLD_START_S),
    )?;
    let jobs_per_task = args.jobs_per_task.unwrap_or_else(|| pool.jobs_per_task()).max(1);
    let batch_speedup = args.batch_speedup.unwrap_or(jobs_per_task as f64);
    if batch_speedup < 1.0 || batch_speedup > jobs_per_task as f64 {
        bail!(
            "--batch-speedup must be between 1 and the jobs per task ({jobs_per_task}): a full executor's \
             aggregate throughput over one job's alone (got {batch_speedup})"
        );
    }
    Ok(CostInput {
        pool: pool.name.clone(),
        jobs_per_day,
        job_seconds,
        hourly_price,
        idle_timeout_s: args.idle_timeout_s.unwrap_or(pool.idle_timeout_s as f64),
        cold_start_s,
        min_warm: args.min_warm.unwrap_or(pool.min_warm),
        jobs_per_task,
        batch_speedup,
        batch_speedup_measured: args.batch_speedup.is_some(),
    })
}

/// A number with at most `decimals` decimals, trailing zeros dropped.
fn num(value: f64, decimals: usize) -> String {
    let s = format!("{value:.decimals$}");
    if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s }
}

fn usd(value: f64) -> String {
    format!("${value:.2}")
}

fn pct(value: f64) -> String {
    format!("{:.1}%", value * 100.0)
}

/// The table and its conclusion.
pub fn render(e: &CostEstimate) -> String {
    let executors = if e.always_on_executors == 1 { "executor" } else { "executors" };
    let header_ao = format!("always on ({} {executors})", e.always_on_executors);
    let rows: [(&str, String, String); 6] = [
        (
            "executor hours / day",
            format!("{:.2}", e.billed_hours_scale_to_zero),
            format!("{:.2}", e.billed_hours_always_on),
        ),
        ("cost / day", usd(e.cost_per_day_scale_to_zero), usd(e.cost_per_day_always_on)),
        ("cost / month (30 days)", usd(e.cost_per_month_scale_to_zero), usd(e.cost_per_month_always_on)),
        ("cold starts / day", format!("{:.1}", e.cold_starts_per_day), "0".into()),
        ("jobs waiting a cold start", pct(e.p_cold_start), pct(0.0)),
        ("mean added latency", format!("{:.1} s", e.mean_added_latency_s), "0 s".into()),
    ];
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(0).max("scale to zero".len());
    let w2 = rows.iter().map(|r| r.2.len()).max().unwrap_or(0).max(header_ao.len());

    let mut out = format!(
        "pool {}: {} jobs/day of {} s, {}/h per executor, idle timeout {} s, cold start {} s, \
         min warm {}, {} job(s) per executor at {}x one job's throughput{}\n",
        e.pool,
        num(e.jobs_per_day, 3),
        num(e.job_seconds, 3),
        format_args!("${}", num(e.hourly_price, 4)),
        num(e.idle_timeout_s, 3),
        num(e.cold_start_s, 3),
        e.min_warm,
        e.jobs_per_task,
        num(e.batch_speedup, 2),
        if e.batch_speedup_measured || e.jobs_per_task == 1 {
            ""
        } else {
            " (assumed perfect batching: pass --batch-speedup, measured with benches/engine.sh)"
        },
    );
    out.push_str(&format!(
        "job hours / day: {:.2} (alone), executor busy hours / day: {:.2} (batched)\n\n",
        e.busy_hours_per_day, e.executor_busy_hours_per_day
    ));
    out.push_str(&format!("{:w0$}  {:>w1$}  {:>w2$}\n", "", "scale to zero", header_ao));
    for (label, s2z, ao) in &rows {
        out.push_str(&format!("{label:w0$}  {s2z:>w1$}  {ao:>w2$}\n"));
    }
    out.push('\n');
    out.push_str(&conclusion(e));
    out.push('\n');
    out
}

fn conclusion(e: &CostEstimate) -> String {
    let monthly_gap = (e.cost_per_month_always_on - e.cost_per_month_scale_to_zero).abs();
    let equal = monthly_gap <= 1e-9 * e.cost_per_month_always_on.abs().max(1.0);
    let break_even = match e.break_even_jobs_per_day {
        Some(n) => format!("break-even against one executor always on: about {} jobs/day", num(n, 1)),
        None => "it costs no more than one executor always on at any load that executor carries".into(),
    };
    if equal {
        format!(
            "Both cost the same ({}/month): min warm {} already keeps executors running all day.",
            usd(e.cost_per_month_always_on),
            e.min_warm
        )
    } else if e.cheaper == Cheaper::ScaleToZero {
        format!(
            "Scale to zero is cheaper: it saves {} ({}/month), and {} of jobs wait a {} s cold start ({}).",
            pct(e.savings_fraction),
            usd(monthly_gap),
            pct(e.p_cold_start),
            num(e.cold_start_s, 1),
            break_even
        )
    } else {
        format!(
            "Always on is cheaper: scale to zero would cost {} more ({}/month) ({}).",
            pct(-e.savings_fraction),
            usd(monthly_gap),
            break_even
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn input(n: f64, s: f64, t: f64, c: f64, price: f64) -> CostInput {
        CostInput {
            pool: "gpu".into(),
            jobs_per_day: n,
            job_seconds: s,
            hourly_price: price,
            idle_timeout_s: t,
            cold_start_s: c,
            min_warm: 0,
            jobs_per_task: 1,
            batch_speedup: 1.0,
            batch_speedup_measured: true,
        }
    }

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * a.abs().max(b.abs()).max(1e-300)
    }

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        cost: CostArgs,
    }

    fn args(extra: &[&str]) -> CostArgs {
        let mut argv = vec!["ferry-cost"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).expect("flags parse").cost
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn matches_the_formula_by_hand() {
        // N = 100, S = 60, T = 300, C = 90, $1/h.
        let e = estimate(&input(100.0, 60.0, 300.0, 90.0, 1.0));
        let lambda = 100.0 / 86400.0; // per second
        let p_cold = (-lambda * 300.0_f64).exp(); // e^{-0.347222} = 0.706648...
        let idle = (1.0 - p_cold) / lambda; // 253.456 s per job
        let billed_s = 100.0 * 60.0 + 100.0 * idle + 100.0 * p_cold * 90.0; // 37705.4 s
        assert!(close(p_cold, 0.706_648_277_857_716, 1e-12));
        assert!(close(billed_s, 37_705.423_293_812_77, 1e-12));
        assert!(close(e.p_cold_start, p_cold, 1e-12));
        assert!(close(e.cold_starts_per_day, 100.0 * p_cold, 1e-12));
        assert!(close(e.billed_hours_scale_to_zero, billed_s / 3600.0, 1e-12));
        assert!(close(e.cost_per_day_scale_to_zero, billed_s / 3600.0, 1e-12)); // $1/h
        assert!(close(e.cost_per_day_scale_to_zero, 10.473_728_692_725_77, 1e-12));
        assert!(close(e.mean_added_latency_s, p_cold * 90.0, 1e-12));
        assert!(close(e.busy_hours_per_day, 6000.0 / 3600.0, 1e-12));
        // Always on: ceil(100·60/86400) = 1 executor, 24 h.
        assert_eq!(e.always_on_executors, 1);
        assert!(close(e.cost_per_day_always_on, 24.0, 1e-12));
        assert!(close(e.cost_per_month_always_on, 720.0, 1e-12));
        assert!(close(e.cost_per_month_scale_to_zero, 30.0 * billed_s / 3600.0, 1e-12));
        assert!(close(e.savings_fraction, 1.0 - (billed_s / 3600.0) / 24.0, 1e-12));
        assert_eq!(e.cheaper, Cheaper::ScaleToZero);
        // The price scales both costs.
        let e2 = estimate(&input(100.0, 60.0, 300.0, 90.0, 2.5));
        assert!(close(e2.cost_per_day_scale_to_zero, 2.5 * e.cost_per_day_scale_to_zero, 1e-12));
        assert!(close(e2.cost_per_day_always_on, 60.0, 1e-12));
    }

    #[test]
    fn always_on_executors_follow_the_load() {
        assert_eq!(estimate(&input(1440.0, 60.0, 300.0, 90.0, 1.0)).always_on_executors, 1); // exactly 1
        assert_eq!(estimate(&input(1441.0, 60.0, 300.0, 90.0, 1.0)).always_on_executors, 2);
        let four_slots = CostInput { jobs_per_task: 4, batch_speedup: 4.0, ..input(5000.0, 60.0, 300.0, 90.0, 1.0) };
        assert_eq!(estimate(&four_slots).always_on_executors, 1); // 5000 min over 4 slots < 1 day
        // A full executor at 2x one job: the same load needs two.
        let half = CostInput { batch_speedup: 2.0, ..four_slots };
        assert_eq!(estimate(&half).always_on_executors, 2);
        let warm = CostInput { min_warm: 3, ..input(10.0, 60.0, 300.0, 90.0, 1.0) };
        assert_eq!(estimate(&warm).always_on_executors, 3);
    }

    #[test]
    fn very_high_load_approaches_always_on() {
        let e = estimate(&input(1.0e6, 60.0, 300.0, 90.0, 1.0));
        // 6e7 busy seconds: 695 executors always on; scale to zero adds their spare time at most.
        assert_eq!(e.always_on_executors, 695);
        assert!(e.p_cold_start < 1e-100);
        let ratio = e.cost_per_day_scale_to_zero / e.cost_per_day_always_on;
        assert!((ratio - 1.0).abs() < 0.01, "ratio {ratio}");
        let spare: f64 = 695.0 * 86400.0 - 6.0e7;
        assert!(close(e.billed_hours_scale_to_zero, (6.0e7 + spare.min(86400.0)) / 3600.0, 1e-9));
    }

    #[test]
    fn very_low_load_bills_run_idle_and_cold_start_per_job() {
        let n = 0.01;
        let e = estimate(&input(n, 60.0, 300.0, 90.0, 1.0));
        let expected = n * (60.0 + 300.0 + 90.0) / 3600.0;
        assert!(close(e.cost_per_day_scale_to_zero, expected, 1e-3), "{}", e.cost_per_day_scale_to_zero);
        assert!(e.p_cold_start > 0.9999);
        assert!(close(e.mean_added_latency_s, 90.0, 1e-3));
    }

    #[test]
    fn break_even_is_where_the_costs_meet() {
        let base = input(100.0, 60.0, 300.0, 90.0, 1.0);
        let e = estimate(&base);
        let n = e.break_even_jobs_per_day.expect("a break-even below 1440 jobs/day");
        assert!(n > 100.0 && n < 1440.0, "{n}");
        let at = estimate(&CostInput { jobs_per_day: n, ..base.clone() });
        assert!(close(at.cost_per_day_scale_to_zero, at.cost_per_day_always_on, 1e-6), "{at:?}");
        // Below it scale to zero is cheaper, above it always on.
        assert_eq!(estimate(&CostInput { jobs_per_day: 0.9 * n, ..base.clone() }).cheaper, Cheaper::ScaleToZero);
        assert_eq!(estimate(&CostInput { jobs_per_day: 1.1 * n, ..base.clone() }).cheaper, Cheaper::AlwaysOn);
        // The break-even does not depend on N itself, nor on the price.
        let other = estimate(&CostInput { jobs_per_day: 7.0, hourly_price: 3.0, ..base });
        assert!(close(other.break_even_jobs_per_day.unwrap(), n, 1e-9));
    }

    #[test]
    fn no_break_even_when_scale_to_zero_always_wins() {
        // No idle timeout and free cold starts: scale to zero bills the busy time only, never
        // more than the one executor always on (equal at N = 1, a job running all day).
        for n in [0.1, 0.5, 1.0] {
            let e = estimate(&input(n, 86_400.0, 0.0, 0.0, 1.0));
            assert_eq!(e.break_even_jobs_per_day, None, "{n}");
        }
        // min_warm keeps an executor on all day: the same cost, no single break-even.
        let warm = estimate(&CostInput { min_warm: 1, ..input(100.0, 60.0, 300.0, 90.0, 1.0) });
        assert_eq!(warm.break_even_jobs_per_day, None);
        assert!(close(warm.cost_per_day_scale_to_zero, warm.cost_per_day_always_on, 1e-12));
        assert_eq!(warm.cold_starts_per_day, 0.0);
        assert_eq!(warm.mean_added_latency_s, 0.0);
        assert!(render(&warm).contains("Both cost the same"));
    }

    #[test]
    fn json_has_every_key() {
        let out = run_with(
            &args(&["--jobs-per-day", "200", "--job-seconds", "120", "--hourly-price", "1.006", "--json"]),
            no_env,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        for key in [
            "jobs_per_day",
            "job_seconds",
            "pool",
            "hourly_price",
            "idle_timeout_s",
            "cold_start_s",
            "busy_hours_per_day",
            "billed_hours_scale_to_zero",
            "cost_per_day_scale_to_zero",
            "cost_per_day_always_on",
            "always_on_executors",
            "cold_starts_per_day",
            "p_cold_start",
            "mean_added_latency_s",
            "savings_fraction",
            "break_even_jobs_per_day",
            "cheaper",
        ] {
            assert!(v.get(key).is_some(), "missing {key} in {out}");
        }
        assert_eq!(v["pool"], "gpu");
        assert_eq!(v["idle_timeout_s"], 300.0);
        assert_eq!(v["cold_start_s"], 90.0);
        assert_eq!(v["cheaper"], "scale_to_zero");
        assert!(v["break_even_jobs_per_day"].is_number());
        let none = run_with(
            &args(&[
                "--jobs-per-task",
                "1",
                "--jobs-per-day",
                "1",
                "--job-seconds",
                "86400",
                "--hourly-price",
                "1",
                "--idle-timeout-s",
                "0",
                "--cold-start-s",
                "0",
                "--json",
            ]),
            no_env,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&none).unwrap();
        assert!(v["break_even_jobs_per_day"].is_null());
    }

    #[test]
    fn text_is_a_table_and_a_sentence() {
        let out =
            run_with(&args(&["--jobs-per-day", "200", "--job-seconds", "120", "--hourly-price", "1.006"]), no_env)
                .unwrap();
        assert!(out.contains("scale to zero"), "{out}");
        assert!(out.contains("always on (1 executor)"), "{out}");
        assert!(out.contains("cost / month (30 days)"), "{out}");
        assert!(out.contains("Scale to zero is cheaper"), "{out}");
        assert!(out.contains("$24.14"), "{out}"); // 24 h at $1.006
    }

    #[test]
    fn pool_settings_come_from_the_file_and_flags_override_them() {
        let path = std::env::temp_dir().join(format!("ferry-cost-test-{}.json", std::process::id()));
        std::fs::write(
            &path,
            r#"{"pools":[{"name":"gpu","idle_timeout_s":120,"min_warm":0,"jobs_per_task":2,
               "hourly_price":0.526,"cold_start_s":45}]}"#,
        )
        .unwrap();
        let file = path.to_str().unwrap();
        let a = args(&["--jobs-per-day", "10", "--job-seconds", "60", "--pools-file", file]);
        let got = resolve(&a, no_env).unwrap();
        assert_eq!(
            (got.hourly_price, got.cold_start_s, got.idle_timeout_s, got.jobs_per_task),
            (0.526, 45.0, 120.0, 2)
        );
        let a = args(&[
            "--jobs-per-day",
            "10",
            "--job-seconds",
            "60",
            "--pools-file",
            file,
            "--hourly-price",
            "1.006",
            "--cold-start-s",
            "90",
            "--idle-timeout-s",
            "300",
            "--min-warm",
            "1",
        ]);
        let got = resolve(&a, no_env).unwrap();
        assert_eq!((got.hourly_price, got.cold_start_s, got.idle_timeout_s, got.min_warm), (1.006, 90.0, 300.0, 1));
        // FERRY_POOLS inline when no file is given; an unknown pool gets the defaults.
        let env = |k: &str| (k == "FERRY_POOLS").then(|| r#"[{"name":"cpu","hourly_price":0.1}]"#.to_string());
        let got = resolve(&args(&["--jobs-per-day", "10", "--job-seconds", "60", "--pool", "cpu"]), env).unwrap();
        assert_eq!((got.hourly_price, got.cold_start_s, got.idle_timeout_s), (0.1, 90.0, 300.0));
        let err = resolve(&args(&["--jobs-per-day", "10", "--job-seconds", "60", "--pool", "other"]), env).unwrap_err();
        assert!(err.to_string().contains("--hourly-price"), "{err}");
        std::fs::remove_file(&path).ok();
    }

    #[test]
    fn bad_inputs_are_rejected_naming_the_flag() {
        let base = ["--hourly-price", "1"];
        for (flags, flag) in [
            (vec!["--jobs-per-day", "0", "--job-seconds", "60"], "--jobs-per-day"),
            (vec!["--jobs-per-day", "-5", "--job-seconds", "60"], "--jobs-per-day"),
            (vec!["--jobs-per-day", "NaN", "--job-seconds", "60"], "--jobs-per-day"),
            (vec!["--jobs-per-day", "inf", "--job-seconds", "60"], "--jobs-per-day"),
            (vec!["--jobs-per-day", "10", "--job-seconds", "0"], "--job-seconds"),
            (vec!["--jobs-per-day", "10", "--job-seconds", "-1"], "--job-seconds"),
            (vec!["--jobs-per-day", "10", "--job-seconds", "60", "--hourly-price", "0"], "--hourly-price"),
            (vec!["--jobs-per-day", "10", "--job-seconds", "60", "--hourly-price", "-1"], "--hourly-price"),
            (vec!["--jobs-per-day", "10", "--job-seconds", "60", "--cold-start-s", "-1"], "--cold-start-s"),
            (vec!["--jobs-per-day", "10", "--job-seconds", "60", "--idle-timeout-s", "inf"], "--idle-timeout-s"),
        ] {
            let mut all = flags.clone();
            if !flags.contains(&"--hourly-price") {
                all.extend_from_slice(&base);
            }
            let err = run_with(&args(&all), no_env).unwrap_err().to_string();
            assert!(err.contains(flag), "{flags:?}: {err}");
        }
        // No price anywhere.
        let err = run_with(&args(&["--jobs-per-day", "10", "--job-seconds", "60"]), no_env).unwrap_err().to_string();
        assert!(err.contains("--hourly-price"), "{err}");
        // Required flags.
        assert!(Cli::try_parse_from(["ferry-cost", "--job-seconds", "60"]).is_err());
        assert!(Cli::try_parse_from(["ferry-cost", "--jobs-per-day", "60"]).is_err());
    }

    #[test]
    fn a_batch_shares_one_executor() {
        // 32 jobs per executor at 8x one job's throughput.
        let batched = |n: f64| CostInput { jobs_per_task: 32, batch_speedup: 8.0, ..input(n, 600.0, 300.0, 90.0, 1.0) };
        // Less than a day of work (10·600 s): billed as if alone.
        let e = estimate(&batched(10.0));
        assert!(close(e.executor_busy_hours_per_day, e.busy_hours_per_day, 1e-12));
        // 32 executor-days of work alone: full batches, busy time divided by F = 8; always on
        // needs 32 / 8 = 4 executors (not 32, not 1).
        let n = 32.0 * DAY / 600.0;
        let e = estimate(&batched(n));
        assert!(close(e.executor_busy_hours_per_day, e.busy_hours_per_day / 8.0, 1e-12));
        assert_eq!(e.always_on_executors, 4);
        // 16.5 days of work: 3 executors, busy all day.
        let e = estimate(&batched(16.5 * DAY / 600.0));
        assert_eq!(e.always_on_executors, 3);
        assert!(close(e.executor_busy_hours_per_day, 72.0, 1e-12));
        // Scale to zero then costs about what always on does (no idle time left to bill).
        assert!(close(e.billed_hours_scale_to_zero, 72.0 + e.cold_starts_per_day * 90.0 / 3600.0, 1e-9));
        // The flags: an unmeasured speedup is assumed perfect and said to be; out of range refused.
        let out = run_with(
            &args(&["--jobs-per-day", "10", "--job-seconds", "60", "--hourly-price", "1", "--jobs-per-task", "32"]),
            no_env,
        )
        .unwrap();
        assert!(out.contains("32 job(s) per executor at 32x") && out.contains("--batch-speedup"), "{out}");
        let flags = ["--jobs-per-day", "10", "--job-seconds", "60", "--hourly-price", "1", "--jobs-per-task", "32"];
        let measured = run_with(&args(&[&flags[..], &["--batch-speedup", "8.6"]].concat()), no_env).unwrap();
        assert!(measured.contains("at 8.6x") && !measured.contains("assumed"), "{measured}");
        for bad in ["0.5", "33", "0", "NaN"] {
            let err = run_with(&args(&[&flags[..], &["--batch-speedup", bad]].concat()), no_env).unwrap_err();
            assert!(err.to_string().contains("--batch-speedup"), "{bad}: {err}");
        }
    }

    /// The worked table of docs/COST.md: `cargo test -p ferry-cli --lib cost::tests::doc_table -- --nocapture`.
    #[test]
    fn doc_table() {
        let base = input(10.0, 120.0, 300.0, 90.0, 1.006);
        println!(
            "| jobs/day | busy h/day | billed h/day (scale to zero) | cold starts/day | jobs waiting a cold start | scale to zero $/day ($/month) | always on $/day ($/month) | executors always on | savings |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for n in [10.0, 100.0, 1000.0, 10000.0] {
            let e = estimate(&CostInput { jobs_per_day: n, ..base.clone() });
            println!(
                "| {} | {:.2} | {:.2} | {:.1} | {} | {} ({}) | {} ({}) | {} | {} |",
                n,
                e.busy_hours_per_day,
                e.billed_hours_scale_to_zero,
                e.cold_starts_per_day,
                pct(e.p_cold_start),
                usd(e.cost_per_day_scale_to_zero),
                usd(e.cost_per_month_scale_to_zero),
                usd(e.cost_per_day_always_on),
                usd(e.cost_per_month_always_on),
                e.always_on_executors,
                pct(e.savings_fraction),
            );
        }
        let e = estimate(&base);
        println!("break-even: {:?}", e.break_even_jobs_per_day);
        let at = estimate(&CostInput { jobs_per_day: e.break_even_jobs_per_day.unwrap(), ..base.clone() });
        println!("at break-even: {at:?}");
        let g4 = estimate(&CostInput { hourly_price: 0.526, ..base.clone() });
        println!("g4dn break-even: {:?}", g4.break_even_jobs_per_day);
        println!(
            "{}",
            run_with(
                &args(&["--jobs-per-day", "200", "--job-seconds", "120", "--pool", "gpu", "--hourly-price", "1.006"]),
                no_env
            )
            .unwrap()
        );
    }
}
