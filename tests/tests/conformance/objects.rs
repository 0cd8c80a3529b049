//! The results store and the job fields that refer to it: objects round-trip byte for
//! byte, a missing object is None, the signed URL fetches the object without credentials;
//! a job whose input is stored keeps its task, params and reference (and no input); an
//! output recorded by reference replaces an inline one and back, never both.

use ferry_core::input::{Input, JobInput, TextGenerationInput, TextGenerationParams};
use ferry_core::objects::{ObjectRef, Output, input_key, output_key};
use ferry_core::ports::Expected;
use ferry_core::{JobStatus, Task};
use ferry_tests::backends::Backend;
use serde_json::json;

use crate::support::{T0, get, queued_job, tenant, tricky_json};

pub async fn case_objects_round_trip(b: Backend) {
    let id = queued_job(&tenant("objects"), T0).id;
    let key = output_key(&id, 1);
    assert_eq!(b.objects.get(&key).await.unwrap(), None, "[{}] nothing there yet", b.name);
    // Every byte value, and a body larger than one read buffer.
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    b.objects.put(&key, body.clone()).await.unwrap();
    assert_eq!(b.objects.get(&key).await.unwrap().as_deref(), Some(&body[..]), "[{}]", b.name);
    // A write replaces.
    b.objects.put(&key, b"[1]".to_vec()).await.unwrap();
    assert_eq!(b.objects.get(&key).await.unwrap(), Some(b"[1]".to_vec()), "[{}]", b.name);
    assert_eq!(b.objects.get(&output_key(&id, 2)).await.unwrap(), None, "[{}] another attempt's", b.name);
}

pub async fn case_object_urls_need_no_credentials(b: Backend) {
    let id = queued_job(&tenant("urls"), T0).id;
    let key = output_key(&id, 1);
    let body = serde_json::to_vec(&tricky_json()).unwrap();
    b.objects.put(&key, body.clone()).await.unwrap();
    let now = ferry_core::ports::Clock::now(&ferry_core::ports::SystemClock);
    let url = b.objects.url(&key, std::time::Duration::from_secs(600), now).await.unwrap();
    // The embedded store signs URLs only once a server answers them (`ferry dev`'s, tested
    // through it in results.rs); the suite's embedded backend has none.
    let Some(url) = url.filter(|_| b.name == "aws") else {
        assert_eq!(b.name, "embedded", "S3 always presigns");
        return;
    };
    assert_eq!(url.expires_at, now + 600_000);
    let got = reqwest::get(&url.url).await.unwrap();
    assert_eq!(got.status(), 200, "[{}] {}", b.name, url.url);
    assert_eq!(got.bytes().await.unwrap().as_ref(), &body[..], "[{}]", b.name);
}

pub async fn case_stored_input_and_output_round_trip(b: Backend) {
    let t = tenant("stored");
    let mut job = queued_job(&t, T0);
    let params = TextGenerationParams { max_new_tokens: Some(7), stop: Some(vec!["\n".into()]), ..Default::default() };
    let typed = JobInput::TextGeneration { input: TextGenerationInput::prompt("x".repeat(70_000)), params };
    let (input, body) = Input::for_record(typed.clone(), || input_key(&job.id));
    let object = input.object().expect("a large input is stored").clone();
    assert_eq!(object.key, input_key(&job.id));
    b.objects.put(&object.key, body.unwrap()).await.unwrap();
    job.input = input.clone();
    b.jobs.create(&job, None).await.unwrap();

    let got = get(&b, &job.id).await;
    assert_eq!(got.input, input, "[{}]", b.name);
    assert_eq!((got.task(), got.input.input_json()), (Task::TextGeneration, serde_json::Value::Null), "[{}]", b.name);
    assert_eq!(got.input.params_json(), typed.params_json(), "[{}]", b.name);
    let read = b.objects.get(&object.key).await.unwrap();
    assert_eq!(got.input.resolve(read.as_deref()).unwrap(), typed, "[{}] the input reads back", b.name);

    // An output by reference, then inline again: the record holds exactly one of them.
    let mut running = got.clone();
    running.status = JobStatus::Running;
    b.jobs.update(&running, Expected { status: JobStatus::Queued, attempt: 1 }).await.unwrap();
    let mut done = running.clone();
    done.status = JobStatus::Succeeded;
    let reference = ObjectRef { key: output_key(&job.id, 1), bytes: 4_000_000 };
    done.set_output(Output::Stored(reference.clone()));
    b.jobs.update(&done, Expected { status: JobStatus::Running, attempt: 1 }).await.unwrap();
    let got = get(&b, &job.id).await;
    assert_eq!((got.output.clone(), got.output_object.clone()), (None, Some(reference)), "[{}]", b.name);
    let mut again = got.clone();
    again.set_output(Output::Inline(json!({"text": "small"})));
    b.jobs.update(&again, Expected { status: JobStatus::Succeeded, attempt: 1 }).await.unwrap();
    let got = get(&b, &job.id).await;
    assert_eq!((got.output, got.output_object), (Some(json!({"text": "small"})), None), "[{}]", b.name);
}
