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

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    ferry_core::telemetry::init(true);
    ferry_executor::cli::run(Cli::parse().args).await
}
