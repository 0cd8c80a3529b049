//! The example handler served through Ferry's own worker-mode driver, as an executor runs it:
//! it says ready, serves two jobs on one process with progress in order, and answers a bad
//! input with a `failed` that is not retryable.

use std::time::Duration;

use ferry_executor::handler::{HandlerCommand, HandlerEvent, WorkerEnd, WorkerProcess};
use serde_json::json;

#[tokio::test]
async fn serves_jobs_through_the_worker_protocol() {
    let command = HandlerCommand {
        argv: vec![env!("CARGO_BIN_EXE_ferry-example-handler").to_string()],
        env: Default::default(),
        grace: Duration::from_secs(1),
    };
    let root = std::env::temp_dir().join(format!("ferry-example-handler-{}", std::process::id()));
    let mut worker = WorkerProcess::start(&command, &root, Duration::from_secs(30), |_| {}).await.unwrap();

    let text = "Ferries cross the river. The river is wide, and ferries are slow; ferries carry cars.";
    let mut events = vec![];
    let end =
        worker.run("job-1", &json!({"text": text, "top": 2}), "", |e| events.push(e), std::future::pending()).await;
    let WorkerEnd::Done { output: Some(output) } = end else { panic!("{end:?}") };
    assert_eq!(output, json!({"keywords": [["ferries", 3.0], ["river", 2.0]], "words": 15}));
    let percents: Vec<f32> = events
        .iter()
        .filter_map(|e| match e {
            HandlerEvent::Percentage { percent, .. } => Some(*percent),
            _ => None,
        })
        .collect();
    assert_eq!(percents.last(), Some(&100.0));
    assert!(percents.windows(2).all(|w| w[0] < w[1]), "{percents:?}");

    // The same process serves the next job, and refuses a bad input without dying.
    let end = worker.run("job-2", &json!({"text": "  "}), "", |_| {}, std::future::pending()).await;
    assert_eq!(end, WorkerEnd::Failed { retryable: false, message: "input.text: give some text".into() });
    let end = worker.run("job-3", &json!({"text": "boats boats"}), "", |_| {}, std::future::pending()).await;
    assert!(matches!(end, WorkerEnd::Done { output: Some(ref o) } if o["words"] == 2), "{end:?}");
    worker.stop().await;
}
