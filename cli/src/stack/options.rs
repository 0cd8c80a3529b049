//! How `ferry dev`'s stack is built: its options (backend, keys, models, pools, executors)
//! and the catalog and keys they resolve to.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use ferry_core::TenantId;
use ferry_core::catalog::Catalog;
use ferry_core::config::Config;
use ferry_core::pool::Pools;
use ferry_executor::worker::WorkerConfig;

/// The key `ferry dev` accepts when given none, and the CLI's default key: the dev server
/// listens on loopback only, so a well-known key is a convenience, not a hole.
pub const DEV_API_KEY: &str = "fry_dev_local_key";
/// The tenant of keys given without one.
pub const DEV_TENANT: &str = "dev";

/// Which adapters the stack runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// In-process store and queue: nothing else to run.
    Embedded,
    /// DynamoDB and SQS through the AWS SDK (`AWS_ENDPOINT_URL` for an emulator).
    Aws,
}

/// How to build the stack.
#[derive(Debug, Clone)]
pub struct StackOptions {
    pub backend: BackendKind,
    /// `KEY` or `KEY=TENANT`; empty means [`DEV_API_KEY`] for tenant [`DEV_TENANT`].
    pub api_keys: Vec<String>,
    /// `ID=DIR` Hugging Face model directories or `ID=FILE.gguf` GGUF files.
    pub models: Vec<String>,
    pub models_file: Option<PathBuf>,
    /// `ID=COMMAND` per-job handlers (`ferry dev --handler`).
    pub handlers: Vec<String>,
    /// DynamoDB table and SQS queue names (AWS backend).
    pub table: String,
    pub queue: String,
    /// An explicit AWS endpoint; `None` reads the environment.
    pub aws_endpoint: Option<String>,
    /// The S3 bucket of large inputs and outputs (AWS backend; created when missing).
    pub results_bucket: String,
    /// The HTTP API's address (`http://127.0.0.1:PORT`), once bound: the base of the signed
    /// URLs to stored outputs (embedded backend) and of the output references in `result`
    /// events. `None`: views carry no `output_url` (the output route still answers).
    pub api_url: Option<String>,
    /// Where progress is posted: a Management API endpoint (`ferry dev` passes its own
    /// gateway's, `http://{ws addr}`, under `--backend aws`, so the SDK's wire path is used),
    /// or `None` to post straight into the gateway's connection registry.
    pub management_endpoint: Option<String>,
    /// Run in-process executors for the catalog's pools (`ferry dev` does unless
    /// `--no-executor`), so submitted jobs complete with no other process.
    pub executors: bool,
    /// How the in-process executors run (their pool is set per pool).
    pub worker: WorkerConfig,
    pub config: Config,
    /// The pools (min warm, max tasks, idle timeout...); the catalog's other pools get defaults.
    pub pools: Pools,
    /// Scale to zero with real executor processes: a reconcile loop (the dispatcher and the
    /// watchdog) launches them as the backlog calls for; they exit when idle.
    pub scale: Option<ScaleOptions>,
}

/// How `ferry dev` launches executor processes.
#[derive(Debug, Clone)]
pub struct ScaleOptions {
    /// Where the executors reach the stack's in-memory ports (the HTTP API's address,
    /// `http://127.0.0.1:PORT`); only the embedded backend needs it.
    pub stack_url: String,
    /// The executors' Management endpoint (the local gateway), for live progress.
    pub management_endpoint: Option<String>,
    /// How often the dispatcher reconciles (the Lambda runs on every new job and every minute).
    pub reconcile_every: Duration,
    /// How often the watchdog runs.
    pub watchdog_every: Duration,
    /// How long an executor waits for a cancel acknowledgement before its process is killed.
    pub cancel_grace: Duration,
    /// The executors' lease (seconds): a killed executor's job is retried after it lapses.
    pub lease_s: u64,
    /// The executors' message visibility timeout (seconds): a killed executor's message
    /// counts as in-flight backlog (keeping an executor up) until it lapses.
    pub visibility_s: u64,
    /// Overrides every pool's `idle_timeout_s` (`ferry dev --idle-timeout`).
    pub idle_timeout_s: Option<u64>,
    /// Extra environment for the executors.
    pub env: Vec<(String, String)>,
    /// Where executor logs go.
    pub log_dir: PathBuf,
    /// The executor program and its leading arguments; default
    /// [`crate::launcher::ProcessLauncher::find_program`].
    pub program: Option<(PathBuf, Vec<String>)>,
}

impl ScaleOptions {
    pub fn new(stack_url: impl Into<String>) -> Self {
        ScaleOptions {
            stack_url: stack_url.into(),
            management_endpoint: None,
            reconcile_every: Duration::from_millis(500),
            watchdog_every: Duration::from_secs(2),
            cancel_grace: Duration::from_secs(10),
            lease_s: 15,
            visibility_s: 15,
            idle_timeout_s: None,
            env: vec![],
            log_dir: state_dir().join("executors"),
            program: None,
        }
    }
}

impl StackOptions {
    /// Embedded adapters, the dev key, the demo catalog, default config.
    pub fn embedded() -> Self {
        StackOptions {
            backend: BackendKind::Embedded,
            api_keys: vec![],
            models: vec![],
            models_file: None,
            handlers: vec![],
            table: "ferry-jobs".into(),
            queue: "ferry-work".into(),
            aws_endpoint: None,
            results_bucket: "ferry-results".into(),
            api_url: None,
            management_endpoint: None,
            executors: false,
            worker: dev_worker_config(),
            config: Config::default(),
            pools: Pools::default(),
            scale: None,
        }
    }
}

/// `ferry dev`'s executors: poll often, never exit for idleness, 5 s grace on Ctrl-C.
pub fn dev_worker_config() -> WorkerConfig {
    WorkerConfig {
        executor_id: format!("dev-{}", ulid::Ulid::new()),
        idle_timeout: Duration::from_secs(365 * 86_400),
        grace_period: Duration::from_secs(5),
        poll_wait: Duration::from_secs(2),
        ..WorkerConfig::default()
    }
}

/// The id of the demo catalog's text-generation model, which `ferry dev` serves from a tiny
/// random-weight Llama it writes itself when no directory is given (its text is gibberish;
/// `--model tiny-llama=DIR` serves a real one).
pub const DEMO_LLAMA: &str = "tiny-llama";

/// Gives catalog entries without a `path` one `ferry dev` can serve: the demo Llama is
/// written to a cache directory (once). Others stay as they are (their jobs fail with a
/// clear error saying the catalog gives no path).
pub fn resolve_dev_models(catalog: &mut Catalog) -> anyhow::Result<()> {
    for spec in &mut catalog.models {
        if spec.path.is_none() && spec.s3_uri.is_none() && spec.id == DEMO_LLAMA {
            let dir = state_dir().join("models").join(DEMO_LLAMA);
            if !dir.join("model.safetensors").exists() {
                // Written beside and renamed into place, so two `ferry dev`s starting at once
                // never read a half-written model.
                let tmp = dir.with_extension(ulid::Ulid::new().to_string());
                ferry_executor::tiny::write_tiny_llama(&tmp, 42)
                    .with_context(|| format!("writing the demo model to {}", tmp.display()))?;
                if std::fs::rename(&tmp, &dir).is_err() {
                    // Another process got there first (or an old, partial directory is in the way).
                    let _ = std::fs::remove_dir_all(&tmp);
                    if !dir.join("model.safetensors").exists() {
                        bail!("cannot write the demo model to {}", dir.display());
                    }
                }
            }
            // A demo model cached by an older Ferry lacks its chat template: add it.
            let config = dir.join("tokenizer_config.json");
            if !config.exists() {
                let tmp = dir.join(format!("tokenizer_config.{}.json", ulid::Ulid::new()));
                std::fs::write(&tmp, ferry_executor::tiny::tiny_tokenizer_config().to_string())?;
                std::fs::rename(&tmp, &config)?;
            }
            spec.path = Some(dir);
        }
        // The API renders chats at submit with the template the model's directory holds.
        spec.read_chat_template()?;
    }
    Ok(())
}

/// Where `ferry dev` keeps its state (the demo model, the S3 model cache, executor logs): a
/// directory of the user's own, mode 0700: `$FERRY_STATE_DIR`, else `$XDG_STATE_HOME/ferry`,
/// else `~/.local/state/ferry`. Without a home, a fresh directory under the system's temp
/// dir for this process (nothing there is reused: another user could have put it there).
pub fn state_dir() -> PathBuf {
    state_dir_in(|k| std::env::var_os(k))
}

/// Where one stack's large inputs and outputs go: a directory of its own under the state
/// dir's `objects/` (removed when the stack is dropped, as its in-memory jobs are). Others
/// left there by a stack that did not stop normally are removed once a day old.
pub fn objects_dir() -> PathBuf {
    let parent = state_dir().join("objects");
    if let Ok(entries) = std::fs::read_dir(&parent) {
        let day = std::time::Duration::from_secs(86_400);
        for e in entries.flatten() {
            let old = e.metadata().and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().is_ok_and(|a| a > day));
            if old {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    parent.join(ulid::Ulid::new().to_string())
}

fn state_dir_in(lookup: impl Fn(&str) -> Option<std::ffi::OsString>) -> PathBuf {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let env = |k: &str| lookup(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let dir = env("FERRY_STATE_DIR")
        .or_else(|| env("XDG_STATE_HOME").map(|d| d.join("ferry")))
        .or_else(|| env("HOME").map(|h| h.join(".local").join("state").join("ferry")))
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!("ferry-dev-{}-{}", std::process::id(), ulid::Ulid::new()))
        });
    let _ = std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir);
    // An existing directory keeps its contents but loses any group or other access.
    let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
    dir
}

/// Parses `KEY` or `KEY=TENANT`.
pub fn parse_key_arg(arg: &str) -> anyhow::Result<(String, TenantId)> {
    let (key, tenant) = arg.split_once('=').unwrap_or((arg, DEV_TENANT));
    if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()) || key.len() > 256 {
        bail!("API keys are 1 to 256 visible ASCII characters");
    }
    let tenant = TenantId::new(tenant).with_context(|| format!("bad tenant in --api-key {key}=..."))?;
    Ok((key.to_string(), tenant))
}

/// The catalog: a file and/or `--model` directories, else `FERRY_MODELS[_FILE]`, else the
/// demo; with the `--handler`s added.
pub fn build_catalog(opts: &StackOptions) -> anyhow::Result<Catalog> {
    let mut models = match &opts.models_file {
        Some(path) => Catalog::from_file(path)?.models,
        None if opts.models.is_empty() => Catalog::from_env()?.models,
        None => vec![],
    };
    for arg in &opts.models {
        models.push(Catalog::spec_from_arg(arg)?);
    }
    // Handlers join whatever models are served (the demo's too).
    for arg in &opts.handlers {
        models.push(Catalog::handler_from_arg(arg)?);
    }
    Ok(Catalog::new(models)?)
}

#[cfg(test)]
mod state_dir_tests {
    use std::os::unix::fs::PermissionsExt;

    use super::state_dir_in;

    #[test]
    fn the_state_dir_is_the_users_own_and_private() {
        let scratch = ferry_executor::testing::ScratchDir::new("state-dir").unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let xdg = scratch.path().join("xdg");
        let dir = state_dir_in(|k| (k == "XDG_STATE_HOME").then(|| xdg.clone().into()));
        assert_eq!(dir, xdg.join("ferry"));
        assert_eq!(mode(&dir), 0o700);
        // FERRY_STATE_DIR wins; an existing directory open to others is closed.
        let own = scratch.path().join("own");
        std::fs::create_dir_all(&own).unwrap();
        std::fs::set_permissions(&own, std::fs::Permissions::from_mode(0o777)).unwrap();
        let dir = state_dir_in(|k| match k {
            "FERRY_STATE_DIR" => Some(own.clone().into()),
            "XDG_STATE_HOME" => Some(xdg.clone().into()),
            _ => None,
        });
        assert_eq!((dir.as_path(), mode(&own)), (own.as_path(), 0o700));
        // No home at all: a fresh directory each time, never a shared fixed path.
        let a = state_dir_in(|_| None);
        let b = state_dir_in(|_| None);
        assert_ne!(a, b);
        assert_eq!(mode(&a), 0o700);
        let _ = (std::fs::remove_dir(&a), std::fs::remove_dir(&b));
    }
}
