//! Logging setup shared by every binary: JSON lines on stdout where CloudWatch reads them
//! (Lambda, ECS), readable text in a terminal.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `json` picks the format; the level comes from `RUST_LOG`
/// (default `info`). Safe to call twice (the second call is ignored).
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().with_ansi(false).with_current_span(false).with_writer(std::io::stdout).try_init()
    } else {
        builder.try_init()
    };
}

/// True when running inside AWS Lambda or ECS, where logs must be JSON.
pub fn in_aws() -> bool {
    std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_some()
        || std::env::var_os("ECS_CONTAINER_METADATA_URI_V4").is_some()
}
