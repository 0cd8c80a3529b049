//! The models an executor serves: the catalog's models of its pool, each loaded once on
//! first use (fetched from S3 first when the catalog gives an `s3_uri`) and kept for every
//! later job. Loading runs on a blocking thread; the engine thread owns nothing here.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ferry_core::catalog::{Catalog, ModelSpec};
use ferry_core::job::Task;
use ferry_core::progress::EventBody;
use ferry_core::stream::ProgressStream;
use tokio::sync::OnceCell;

use crate::handlers::{HandlerOptions, HandlerRunner};
use crate::models::generate::EngineOptions;
use crate::models::{LoadedModel, ModelError, Placement};

/// Where models stored in S3 are copied to before loading.
#[derive(Clone)]
pub struct S3Models {
    pub client: aws_sdk_s3::Client,
    /// The local cache (`--model-cache`): one directory per model id.
    pub cache: PathBuf,
}

/// The models this executor serves, each loaded once on first use and kept.
pub struct ModelRegistry {
    specs: HashMap<String, ModelSpec>,
    device: String,
    /// `--max-batch-sequences`, for models whose catalog entry names none.
    max_batch_sequences: Option<usize>,
    s3: Option<S3Models>,
    /// How the catalog's handlers of this pool run.
    handlers: HandlerOptions,
    loaded: Mutex<HashMap<String, Arc<OnceCell<Arc<LoadedModel>>>>>,
}

impl ModelRegistry {
    /// The catalog's models of `pool`; `s3` fetches entries that name an `s3_uri`.
    /// `max_batch_sequences`: the executor's `--max-batch-sequences` (None: the device's
    /// default).
    pub fn new(
        catalog: &Catalog,
        pool: &str,
        device: &str,
        max_batch_sequences: Option<usize>,
        s3: Option<S3Models>,
    ) -> ModelRegistry {
        let specs = catalog.models.iter().filter(|m| m.pool == pool).map(|m| (m.id.clone(), m.clone())).collect();
        ModelRegistry {
            specs,
            device: device.to_string(),
            max_batch_sequences,
            s3,
            handlers: HandlerOptions::new(std::time::Duration::from_secs(25)),
            loaded: Mutex::new(HashMap::new()),
        }
    }

    /// The registry with its handlers run under `options`.
    pub fn with_handlers(mut self, options: HandlerOptions) -> ModelRegistry {
        self.handlers = options;
        self
    }

    /// Stops what the loaded models keep running between jobs (a handler's idle workers,
    /// their process groups killed): what an executor does as its work loop returns. The
    /// models stay loaded, for another run of the loop.
    pub fn close(&self) {
        let loaded: Vec<_> = self.loaded.lock().unwrap().values().filter_map(|c| c.get().cloned()).collect();
        for model in loaded {
            model.close();
        }
    }

    /// Sequences `spec`'s engine runs at once: the catalog's `max_batch_sequences`, else
    /// `--max-batch-sequences`, else 32 on CPU and 64 on CUDA.
    pub fn sequences_for(&self, spec: &ModelSpec) -> usize {
        if spec.task == Task::Handler {
            return HandlerRunner::concurrency(spec);
        }
        let device = spec.device.as_deref().unwrap_or(&self.device);
        let default = if device.starts_with("cuda") { 64 } else { 32 };
        spec.max_batch_sequences.map(|n| n as usize).or(self.max_batch_sequences).unwrap_or(default).max(1)
    }

    /// Jobs this executor can run at once: the largest engine capacity among its models
    /// (each engine holds what it cannot run yet in its own queue).
    pub fn capacity(&self) -> usize {
        self.specs.values().map(|s| self.sequences_for(s)).max().unwrap_or(1)
    }

    /// Registers an already loaded model (tests, or models built in code).
    pub fn preload(&self, model: &str, loaded: LoadedModel) {
        let cell = OnceCell::new_with(Some(Arc::new(loaded)));
        self.loaded.lock().unwrap().insert(model.to_string(), Arc::new(cell));
    }

    pub fn serves(&self, model: &str) -> bool {
        self.specs.contains_key(model)
    }

    /// Whether the model is loaded already (no load ahead for a job of it).
    pub fn is_loaded(&self, model: &str) -> bool {
        self.loaded.lock().unwrap().get(model).is_some_and(|c| c.initialized())
    }

    /// The model, loading it on first use (reported on `stream` as log events). A load
    /// that fails is not remembered: the next job tries again.
    pub async fn get(&self, model: &str, stream: &ProgressStream) -> Result<Arc<LoadedModel>, ModelError> {
        let spec =
            self.specs.get(model).ok_or_else(|| ModelError::Load(format!("this executor does not serve {model}")))?;
        let cell = self.loaded.lock().unwrap().entry(model.to_string()).or_default().clone();
        if let Some(m) = cell.get() {
            return Ok(m.clone());
        }
        let loaded = cell
            .get_or_try_init(|| async {
                if spec.task == Task::Handler {
                    let runner = HandlerRunner::new(spec, self.handlers.clone())?;
                    return Ok(Arc::new(LoadedModel::Custom(Arc::new(runner))));
                }
                let _ = stream.push(log("info", format!("loading model {model}")));
                let started = Instant::now();
                let mut spec = spec.clone();
                if let (None, Some(uri)) = (&spec.path, &spec.s3_uri) {
                    let s3 = self.s3.as_ref().ok_or_else(|| {
                        ModelError::Load(format!(
                            "{model}: stored at {uri}, but this executor has no S3 access configured"
                        ))
                    })?;
                    let dir = crate::fetch::cache_dir(&s3.cache, model);
                    let bytes = crate::fetch::sync_s3_dir(&s3.client, uri, &dir).await?;
                    let ms = started.elapsed().as_millis();
                    // The job's own log shows what was fetched, not from where (the bucket is
                    // the operator's); the executor's log has the location.
                    tracing::info!(model, uri = %uri, bytes, fetch_ms = ms as u64, "model fetched from S3");
                    let _ = stream.push(log("info", format!("fetched {model}: {bytes} bytes in {ms} ms")));
                    spec.path = Some(dir);
                }
                let device = self.device.clone();
                let loading = spec.clone();
                let sequences = self.sequences_for(&spec);
                let model = tokio::task::spawn_blocking(move || load(&loading, &device, sequences))
                    .await
                    .map_err(|e| ModelError::Runtime(format!("model loader panicked: {e}")))??;
                let ms = started.elapsed().as_millis();
                let resident = crate::models::resident_bytes();
                tracing::info!(model = %spec.id, load_ms = ms as u64, resident_bytes = resident, "model loaded");
                let memory =
                    resident.map(|b| format!(", executor resident memory {} MiB", b >> 20)).unwrap_or_default();
                let _ = stream.push(log("info", format!("model loaded in {ms} ms{memory}")));
                Ok::<_, ModelError>(Arc::new(model))
            })
            .await
            .inspect_err(|e| tracing::error!(model, error = %e, "the model could not be loaded"))?;
        Ok(loaded.clone())
    }
}

/// Loads a catalog entry on its device.
fn load(spec: &ModelSpec, default_device: &str, sequences: usize) -> Result<LoadedModel, ModelError> {
    let dir: PathBuf = match (&spec.path, &spec.s3_uri) {
        (Some(p), _) => p.clone(),
        (None, Some(uri)) => return Err(ModelError::Load(format!("{}: {uri} was not fetched", spec.id))),
        (None, None) => return Err(ModelError::Load(format!("{}: the catalog gives no path for this model", spec.id))),
    };
    let placement = Placement::parse(spec.device.as_deref().unwrap_or(default_device), spec.dtype.as_deref())?;
    let engine = EngineOptions { max_sequences: sequences, ..EngineOptions::for_device(&placement.device) };
    LoadedModel::load(spec, &dir, &placement, engine)
}

pub(crate) fn log(level: &str, message: String) -> EventBody {
    EventBody::Log { level: level.into(), message }
}
