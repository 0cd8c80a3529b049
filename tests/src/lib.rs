//! Support for Ferry's cross-crate tests (`tests/tests/*.rs`): the backends the port
//! conformance suite runs against, and the moto emulator that hosts the AWS ones.

pub mod backends;
pub mod dev;
pub mod ecs;
pub mod event_files;
pub mod faults;
pub mod fixtures;
pub mod follow;
pub mod infra;
pub mod moto;
pub mod recorder;
pub mod standard_webhooks;

/// Generates `embedded::<name>` and `aws::<name>` tests from `async fn <name>(b: Backend)`
/// cases in the calling module (the AWS ones skip, with a message, where moto is missing).
#[macro_export]
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod embedded { $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name($crate::backends::embedded()).await }
        )* }
        mod aws { $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some(b) = $crate::backends::aws().await else { eprintln!("skipping: moto_server not installed"); return };
                super::$name(b).await
            }
        )* }
    };
}

/// Generates `embedded::<name>` and `aws::<name>` tests from `async fn <name>(aws: bool)`
/// cases in the calling module that start a whole stack ([`dev::DevStack`], which skips the
/// AWS ones where moto is missing); four worker threads, as `ferry dev` runs.
#[macro_export]
macro_rules! on_both_stacks {
    ($($name:ident),* $(,)?) => {
        mod embedded { $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() { super::$name(false).await }
        )* }
        mod aws { $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() { super::$name(true).await }
        )* }
    };
}
