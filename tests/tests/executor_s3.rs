//! Models stored in S3 (`s3_uri` in the catalog): the executor copies the directory from S3
//! (moto, over HTTP with the real SDK) into its model cache on the first job, loads it and
//! runs the job; a second executor with the same cache downloads nothing; a prefix with no
//! objects fails the job with a load error; retrained weights of the same size are fetched
//! again (the cache is keyed on ETags); two syncs at once download once. Runs on moto only (S3 has no embedded
//! adapter: the embedded stack reads local directories).

use std::path::Path;
use std::time::Duration;

use ferry_core::catalog::{Catalog, ModelSpec};
use ferry_core::job::{JobStatus, Task};
use ferry_core::ports::WorkMessage;
use ferry_core::progress::EventBody;
use ferry_executor::testing::{ScratchDir, write_tiny_llama};
use ferry_executor::worker::{S3Models, Shutdown, Worker, WorkerConfig};

fn spec(id: &str, uri: &str) -> ModelSpec {
    ModelSpec {
        architecture: Some("LlamaForCausalLM".into()),
        s3_uri: Some(uri.into()),
        ..ModelSpec::new(id, Task::TextGeneration)
    }
}

async fn upload_dir(s3: &aws_sdk_s3::Client, bucket: &str, prefix: &str, dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let key = format!("{prefix}/{}", path.file_name().unwrap().to_str().unwrap());
        let body = aws_sdk_s3::primitives::ByteStream::from(std::fs::read(&path).unwrap());
        s3.put_object().bucket(bucket).key(key).body(body).send().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn models_are_fetched_from_s3_once_and_served() {
    let Some(b) = ferry_tests::backends::aws().await else { return };
    let moto = ferry_tests::moto::shared().unwrap();
    let sdk = ferry_aws::sdk_config_for_endpoint(&moto.endpoint).await;
    let s3 = ferry_aws::s3_client(&sdk);
    let bucket = ferry_tests::backends::unique_name();
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let local = ScratchDir::new("s3-model").unwrap();
    write_tiny_llama(local.path(), 3).unwrap();
    upload_dir(&s3, &bucket, "models/tiny", local.path()).await;

    let catalog = Catalog::new(vec![
        spec("s3-llama", &format!("s3://{bucket}/models/tiny/")),
        spec("s3-missing", &format!("s3://{bucket}/models/nothing-here")),
    ])
    .unwrap();
    let root = b.root(catalog);
    let cache = ScratchDir::new("s3-cache").unwrap();
    let worker = || {
        let config = WorkerConfig {
            idle_timeout: Duration::from_millis(1000),
            poll_wait: Duration::from_millis(200),
            ..WorkerConfig::default()
        };
        let s3 = S3Models { client: s3.clone(), cache: cache.path().to_path_buf() };
        Worker::with_s3(&root, config, Some(s3))
    };
    let submit = |model: &str| {
        let mut job = ferry_tests::fixtures::job("acme", JobStatus::Queued);
        job.model = model.into();
        job.input = ferry_tests::fixtures::generate("the river", 5);
        job
    };
    let run = |job: ferry_core::Job| {
        let (b, w) = (b.clone(), worker());
        async move {
            b.jobs.create(&job, None).await.unwrap();
            let m = WorkMessage::for_job(&job, "s3");
            b.queue.send(&m).await.unwrap();
            w.run(Shutdown::default()).await;
            let done = b.jobs.get(&job.id).await.unwrap().unwrap();
            let events = b.events.read(&job.id, 0, done.last_seq, 100).await.unwrap();
            let logs: Vec<String> = events
                .into_iter()
                .filter_map(|e| match e.body {
                    EventBody::Log { message, .. } => Some(message),
                    _ => None,
                })
                .collect();
            (done, logs)
        }
    };

    let (first, logs) = run(submit("s3-llama")).await;
    assert_eq!(first.status, JobStatus::Succeeded, "{first:?} {logs:?}");
    assert_eq!(first.output.as_ref().unwrap()["token_ids"].as_array().unwrap().len(), 5);
    let fetched = logs.iter().find(|l| l.starts_with("fetched s3-llama:")).expect("the fetch is reported");
    assert!(!fetched.contains(": 0 bytes"), "{fetched}");
    let cached = ferry_executor::fetch::cache_dir(cache.path(), "s3-llama");
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert_eq!(
            std::fs::read(cached.join(file)).unwrap(),
            std::fs::read(local.path().join(file)).unwrap(),
            "{file} copied intact"
        );
    }

    // A fresh executor on the same host: the cache is complete, nothing is downloaded, and
    // the same seedless greedy job gives the same output.
    let (second, logs) = run(submit("s3-llama")).await;
    assert_eq!(second.status, JobStatus::Succeeded);
    assert!(logs.iter().any(|l| l.starts_with("fetched s3-llama:") && l.contains(": 0 bytes")), "{logs:?}");
    assert!(logs.iter().all(|l| !l.contains("s3://")), "the bucket is not shown to the tenant: {logs:?}");
    assert_eq!(second.output.as_ref().unwrap()["token_ids"], first.output.as_ref().unwrap()["token_ids"]);

    // Nothing stored under the prefix: a clear, non-retried load error.
    let (missing, _) = run(submit("s3-missing")).await;
    assert_eq!((missing.status, missing.attempt), (JobStatus::Failed, 1));
    let error = missing.error.unwrap();
    assert_eq!(error.kind, "model_load_failed");
    // The tenant reads that the model could not load; where it is stored and why (no objects
    // under the prefix) are the operator's, in the executor's log.
    assert!(error.message.contains("could not be loaded"), "{}", error.message);
    assert!(!error.message.contains("s3://") && !error.message.contains("prefix"), "{}", error.message);

    // Retrained weights of the same shape (same sizes, new content): the cache is keyed on
    // the objects' ETags, so the new weights are fetched and served, and only they.
    write_tiny_llama(local.path(), 4).unwrap();
    let weights = std::fs::read(local.path().join("model.safetensors")).unwrap();
    let old = std::fs::read(cached.join("model.safetensors")).unwrap();
    assert_eq!(weights.len(), old.len(), "same shape");
    assert_ne!(weights, old, "new weights");
    upload_dir(&s3, &bucket, "models/tiny", local.path()).await;
    let (third, logs) = run(submit("s3-llama")).await;
    assert_eq!(third.status, JobStatus::Succeeded, "{third:?} {logs:?}");
    assert_eq!(std::fs::read(cached.join("model.safetensors")).unwrap(), weights, "the cache holds the new weights");
    let fetched = logs.iter().find(|l| l.starts_with("fetched s3-llama:")).expect("the fetch is reported");
    assert!(fetched.contains(&format!(": {} bytes", weights.len())), "only the changed file: {fetched}");
}

/// Two executors on one host syncing the same model at once: one downloads, the other waits
/// for the cache lock and finds everything there; the files are whole, no temporary left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_syncs_of_one_model_download_it_once() {
    let Some(moto) = ferry_tests::moto::shared() else { return };
    let sdk = ferry_aws::sdk_config_for_endpoint(&moto.endpoint).await;
    let s3 = ferry_aws::s3_client(&sdk);
    let bucket = ferry_tests::backends::unique_name();
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let local = ScratchDir::new("s3-model-concurrent").unwrap();
    write_tiny_llama(local.path(), 5).unwrap();
    upload_dir(&s3, &bucket, "m", local.path()).await;
    let cache = ScratchDir::new("s3-cache-concurrent").unwrap();
    let dir = ferry_executor::fetch::cache_dir(cache.path(), "m");
    let uri = format!("s3://{bucket}/m");
    let (a, b) = tokio::join!(
        ferry_executor::fetch::sync_s3_dir(&s3, &uri, &dir),
        ferry_executor::fetch::sync_s3_dir(&s3, &uri, &dir)
    );
    let total: u64 = std::fs::read_dir(local.path()).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a + b, total, "downloaded once between them ({a} + {b})");
    for entry in std::fs::read_dir(local.path()).unwrap() {
        let name = entry.unwrap().file_name();
        assert_eq!(std::fs::read(dir.join(&name)).unwrap(), std::fs::read(local.path().join(&name)).unwrap());
    }
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".ferry-partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
