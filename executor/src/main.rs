//! `ferry-executor`: the ECS worker. Its flags and logic live in [`ferry_executor::cli`],
//! shared with `ferry executor`.

use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(name = "ferry-executor", version, about = "Runs Ferry jobs from the work queue on candle models")]
struct Cli {
    #[command(flatten)]
    args: ferry_executor::cli::Args,
}

fn main() -> anyhow::Result<ExitCode> {
    // SAFETY: first thing in main, before the runtime starts any thread.
    unsafe { ferry_executor::models::pin_cpu_threads() };
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(async {
        ferry_core::telemetry::init(true);
        ferry_executor::cli::run(Cli::parse().args).await
    })
}
