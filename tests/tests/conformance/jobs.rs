//! Job store cases: create, idempotency bindings, get and list; the API key store and the
//! webhook secret store.
//!
//! On moto, the tenant index (a GSI) is read-after-write consistent; on real DynamoDB it is
//! eventually consistent, so the list cases would need retries there.

use std::collections::HashSet;

use ferry_core::input::JobInput;
use ferry_core::ports::{ApiKeyRecord, Created, Expected, StoreError, StoredWebhookSecret, WebhookSecrets};
use ferry_core::{JobId, JobStatus, Task};
use ferry_tests::backends::Backend;
use serde_json::{Value, json};

use crate::support::{
    T0, TRICKY_TEXT, full_job, get, idem, ids, list, list_all, queued_job, sorted_desc, tenant, tricky_json,
};

pub async fn case_create_get_round_trip(b: Backend) {
    let t = tenant("round-trip");
    let full = full_job(&t, T0);
    assert_eq!(b.jobs.create(&full, None).await.unwrap(), Created::New);
    assert_eq!(get(&b, &full.id).await, full, "[{}] every field set", b.name);

    let mut bare = queued_job(&t, T0 + 1);
    bare.input = JobInput::texts([TRICKY_TEXT, "", "\u{feff}"]).into();
    assert_eq!(b.jobs.create(&bare, None).await.unwrap(), Created::New);
    assert_eq!(get(&b, &bare.id).await, bare, "[{}] optional fields unset", b.name);

    // Other JSON shapes at the top level of the output, and the other task.
    for (n, output) in
        [json!("just a string"), json!([1.5, -0.25, u64::MAX, i64::MIN]), json!(null)].into_iter().enumerate()
    {
        let mut odd = queued_job(&t, T0 + 2 + n as u64);
        odd.input = JobInput::prompt(TRICKY_TEXT).into();
        odd.output = Some(output);
        b.jobs.create(&odd, None).await.unwrap();
        let got = get(&b, &odd.id).await;
        assert_eq!(
            (&got.input, &got.output, got.task()),
            (&odd.input, &odd.output, Task::TextGeneration),
            "[{}]",
            b.name
        );
        if let Some(Value::Array(numbers)) = &got.output {
            // The numbers must come back as numbers, not strings or lossy floats.
            assert_eq!(numbers[2].as_u64(), Some(u64::MAX));
            assert_eq!(numbers[3].as_i64(), Some(i64::MIN));
        }
    }
    assert_eq!(get(&b, &full.id).await.output.unwrap()["tricky"], tricky_json(), "[{}]", b.name);
}

pub async fn case_create_duplicate_id(b: Backend) {
    let t = tenant("dup");
    let job = queued_job(&t, T0);
    b.jobs.create(&job, None).await.unwrap();
    let mut again = job.clone();
    again.model = "other".into();
    assert!(matches!(b.jobs.create(&again, None).await, Err(StoreError::AlreadyExists)), "[{}]", b.name);

    // With a fresh idempotency key, a duplicate id still fails, and atomically: the key
    // must not have been bound by the failed create.
    let rec = idem(&t, "fresh-key", &again, T0);
    assert!(matches!(b.jobs.create(&again, Some(&rec)).await, Err(StoreError::AlreadyExists)), "[{}]", b.name);
    let other = queued_job(&t, T0 + 1);
    let rec = idem(&t, "fresh-key", &other, T0 + 1);
    assert_eq!(b.jobs.create(&other, Some(&rec)).await.unwrap(), Created::New, "[{}] key was bound", b.name);
    assert_eq!(get(&b, &job.id).await, job, "[{}] original overwritten", b.name);
}

pub async fn case_idempotent_create(b: Backend) {
    let (t, u) = (tenant("idem-a"), tenant("idem-b"));
    let key = "client key with spaces, ünïcode & 🔑 — and a very long tail ".repeat(4);
    let first = queued_job(&t, T0);
    let first_rec = idem(&t, &key, &first, T0);
    assert_eq!(b.jobs.create(&first, Some(&first_rec)).await.unwrap(), Created::New);

    // Same tenant, same key, another job: the first binding comes back, nothing is written.
    let second = queued_job(&t, T0 + 10);
    let second_rec = idem(&t, &key, &second, T0 + 10);
    let got = b.jobs.create(&second, Some(&second_rec)).await.unwrap();
    assert_eq!(got, Created::Duplicate(first_rec.clone()), "[{}]", b.name);
    assert_eq!(b.jobs.get(&second.id).await.unwrap(), None, "[{}] duplicate wrote its job", b.name);
    assert_eq!(ids(&list_all(&b, &t, None, 10).await), vec![first.id], "[{}]", b.name);

    // Another tenant may use the same key.
    let theirs = queued_job(&u, T0 + 20);
    let theirs_rec = idem(&u, &key, &theirs, T0 + 20);
    assert_eq!(b.jobs.create(&theirs, Some(&theirs_rec)).await.unwrap(), Created::New, "[{}]", b.name);
    // ... and that did not disturb the first tenant's binding.
    let third = queued_job(&t, T0 + 30);
    let got = b.jobs.create(&third, Some(&idem(&t, &key, &third, T0 + 30))).await.unwrap();
    assert_eq!(got, Created::Duplicate(first_rec), "[{}]", b.name);
    assert_eq!(list_all(&b, &u, None, 10).await, vec![theirs], "[{}]", b.name);
}

pub async fn case_expired_binding_is_replaced(b: Backend) {
    let t = tenant("idem-expiry");
    let first = queued_job(&t, T0);
    let first_rec = idem(&t, "k", &first, T0);
    b.jobs.create(&first, Some(&first_rec)).await.unwrap();

    // Exactly at expiry the binding still holds (expires_at < created_at is what frees it).
    let at = first_rec.expires_at;
    let early = queued_job(&t, at);
    let got = b.jobs.create(&early, Some(&idem(&t, "k", &early, at))).await.unwrap();
    assert_eq!(got, Created::Duplicate(first_rec), "[{}]", b.name);

    let later = queued_job(&t, at + 1);
    let later_rec = idem(&t, "k", &later, at + 1);
    assert_eq!(b.jobs.create(&later, Some(&later_rec)).await.unwrap(), Created::New, "[{}]", b.name);
    // The new binding replaced the old one.
    let again = queued_job(&t, at + 2);
    let got = b.jobs.create(&again, Some(&idem(&t, "k", &again, at + 2))).await.unwrap();
    assert_eq!(got, Created::Duplicate(later_rec), "[{}]", b.name);
    assert_eq!(ids(&list_all(&b, &t, None, 10).await), vec![later.id, first.id], "[{}]", b.name);
}

/// `rebind` moves a key from the job it is bound to onto a new job, atomically, and only
/// from that job: a retry that lost the race to another gets the winner's binding.
pub async fn case_rebind_takes_the_key_over(b: Backend) {
    let t = tenant("idem-rebind");
    let first = queued_job(&t, T0);
    b.jobs.create(&first, Some(&idem(&t, "k", &first, T0))).await.unwrap();

    let second = queued_job(&t, T0 + 10);
    let second_rec = idem(&t, "k", &second, T0 + 10);
    let got = b.jobs.rebind(&second, &second_rec, &first.id).await.unwrap();
    assert_eq!(got, Created::New, "[{}]", b.name);
    assert_eq!(get(&b, &second.id).await, second, "[{}]", b.name);
    assert_eq!(get(&b, &first.id).await, first, "[{}] the stale job is left as it was", b.name);
    // The key now names the second job.
    let probe = queued_job(&t, T0 + 20);
    let got = b.jobs.create(&probe, Some(&idem(&t, "k", &probe, T0 + 20))).await.unwrap();
    assert_eq!(got, Created::Duplicate(second_rec.clone()), "[{}]", b.name);

    // A retry that still thinks the key names the first job loses: nothing is written.
    let late = queued_job(&t, T0 + 30);
    let got = b.jobs.rebind(&late, &idem(&t, "k", &late, T0 + 30), &first.id).await.unwrap();
    assert_eq!(got, Created::Duplicate(second_rec), "[{}]", b.name);
    assert_eq!(b.jobs.get(&late.id).await.unwrap(), None, "[{}] the losing rebind wrote its job", b.name);

    // A key bound to nothing is bound as by create; a duplicate job id is refused whole.
    let fresh = queued_job(&t, T0 + 40);
    let got = b.jobs.rebind(&fresh, &idem(&t, "other", &fresh, T0 + 40), &first.id).await.unwrap();
    assert_eq!(got, Created::New, "[{}]", b.name);
    let again = b.jobs.rebind(&fresh, &idem(&t, "third", &fresh, T0 + 50), &first.id).await;
    assert!(matches!(again, Err(StoreError::AlreadyExists)), "[{}] {again:?}", b.name);
    let probe = queued_job(&t, T0 + 60);
    let got = b.jobs.create(&probe, Some(&idem(&t, "third", &probe, T0 + 60))).await.unwrap();
    assert_eq!(got, Created::New, "[{}] the refused rebind bound its key", b.name);
}

pub async fn case_get_missing(b: Backend) {
    assert_eq!(b.jobs.get(&JobId::generate(T0)).await.unwrap(), None, "[{}]", b.name);
}

pub async fn case_list_pages_newest_first(b: Backend) {
    let (t, other) = (tenant("pages"), tenant("pages-other"));
    let mut created = Vec::new();
    for i in 0..25 {
        let job = queued_job(&t, T0 + i * 1000);
        b.jobs.create(&job, None).await.unwrap();
        created.push(job.id);
        if i % 5 == 0 {
            b.jobs.create(&queued_job(&other, T0 + i * 1000 + 1), None).await.unwrap();
        }
    }
    let all = list_all(&b, &t, None, 10).await;
    let got = ids(&all);
    assert_eq!(got, sorted_desc(created.clone()), "[{}] not all jobs, newest first", b.name);
    assert_eq!(got.iter().collect::<HashSet<_>>().len(), 25, "[{}] duplicates", b.name);
    assert!(got.windows(2).all(|w| w[0] > w[1]), "[{}] not strictly descending", b.name);
    assert!(all.iter().all(|j| j.tenant == t), "[{}] other tenant's job listed", b.name);

    // The first page is the newest ten, whole jobs.
    let first = list(&b, &t, None, 10, None).await;
    assert_eq!(first.jobs.len(), 10, "[{}]", b.name);
    assert_eq!(first.jobs[0], get(&b, &created[24]).await, "[{}]", b.name);
    // A limit covering everything needs no further page.
    let everything = list(&b, &t, None, 100, None).await;
    assert_eq!((everything.jobs.len(), everything.next), (25, None), "[{}]", b.name);
}

pub async fn case_list_status_filter_across_pages(b: Backend) {
    let t = tenant("filter");
    let statuses = [JobStatus::Queued, JobStatus::Running, JobStatus::Succeeded];
    let mut running = Vec::new();
    for i in 0..30u64 {
        let mut job = queued_job(&t, T0 + i * 1000);
        job.status = statuses[(i % 3) as usize];
        b.jobs.create(&job, None).await.unwrap();
        if job.status == JobStatus::Running {
            running.push(job.id);
        }
    }
    // A limit of 4 against 10 matches among 30 forces the store to read past filtered-out
    // jobs within and across pages.
    let got = list_all(&b, &t, Some(JobStatus::Running), 4).await;
    assert_eq!(ids(&got), sorted_desc(running), "[{}]", b.name);
    assert!(got.iter().all(|j| j.status == JobStatus::Running), "[{}]", b.name);

    let none = list(&b, &t, Some(JobStatus::Failed), 10, None).await;
    assert_eq!((none.jobs.len(), none.next), (0, None), "[{}]", b.name);

    // A status change moves the job between filtered lists.
    let mut job = got[0].clone();
    job.status = JobStatus::Failed;
    b.jobs.update(&job, Expected { status: JobStatus::Running, attempt: 1 }).await.unwrap();
    assert_eq!(ids(&list_all(&b, &t, Some(JobStatus::Failed), 10).await), vec![job.id], "[{}]", b.name);
    assert_eq!(list_all(&b, &t, Some(JobStatus::Running), 4).await.len(), 9, "[{}]", b.name);
}

pub async fn case_list_tenant_isolation_and_after(b: Backend) {
    let (a, z, nobody) = (tenant("iso-a"), tenant("iso-z"), tenant("iso-nobody"));
    let mut mine = Vec::new();
    for i in 0..3 {
        let job = queued_job(&a, T0 + i * 10);
        b.jobs.create(&job, None).await.unwrap();
        mine.push(job.id);
        b.jobs.create(&queued_job(&z, T0 + i * 10 + 5), None).await.unwrap();
    }
    let page = list(&b, &a, None, 10, None).await;
    assert_eq!(ids(&page.jobs), sorted_desc(mine.clone()), "[{}]", b.name);
    assert_eq!(page.next, None, "[{}]", b.name);
    let empty = list(&b, &nobody, None, 10, None).await;
    assert_eq!((empty.jobs.len(), empty.next), (0, None), "[{}]", b.name);

    // `after` is exclusive.
    let page = list(&b, &a, None, 10, Some(mine[1])).await;
    assert_eq!(ids(&page.jobs), vec![mine[0]], "[{}]", b.name);
    let page = list(&b, &a, None, 10, Some(mine[0])).await;
    assert!(page.jobs.is_empty(), "[{}]", b.name);
}

pub async fn case_api_keys(b: Backend) {
    let hash = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    assert_eq!(b.keys.lookup(hash).await.unwrap(), None, "[{}]", b.name);
    let record = ApiKeyRecord { key_hash: hash.into(), tenant: tenant("keys"), created_at: T0 };
    b.keys.put(&record).await.unwrap();
    assert_eq!(b.keys.lookup(hash).await.unwrap(), Some(record.clone()), "[{}]", b.name);

    let replaced = ApiKeyRecord { tenant: tenant("keys-2"), created_at: T0 + 1, ..record };
    b.keys.put(&replaced).await.unwrap();
    assert_eq!(b.keys.lookup(hash).await.unwrap(), Some(replaced), "[{}]", b.name);
    assert_eq!(b.keys.lookup(&hash.replace('9', "8")).await.unwrap(), None, "[{}]", b.name);
}

pub async fn case_webhook_secrets(b: Backend) {
    let (t, other) = (tenant("hooks"), tenant("hooks-2"));
    let store = b.webhook_secrets.as_ref();
    assert_eq!(store.get(&t).await.unwrap(), None, "[{}]", b.name);
    let secret = |s: &str, retires_at| StoredWebhookSecret { secret: s.into(), created_at: T0, retires_at };
    let first = WebhookSecrets { tenant: t.clone(), secrets: vec![secret("whsec_a", None)], version: 1 };
    assert!(store.put(&first).await.unwrap(), "[{}] the first record", b.name);
    assert!(!store.put(&first).await.unwrap(), "[{}] a second first record loses", b.name);
    let skipped = WebhookSecrets { version: 3, ..first.clone() };
    assert!(!store.put(&skipped).await.unwrap(), "[{}] a version out of turn loses", b.name);
    let second = WebhookSecrets {
        tenant: t.clone(),
        secrets: vec![secret("whsec_b", None), secret("whsec_a", Some(T0 + 5))],
        version: 2,
    };
    assert!(store.put(&second).await.unwrap(), "[{}]", b.name);
    assert!(!store.put(&WebhookSecrets { secrets: vec![], ..second.clone() }).await.unwrap(), "[{}]", b.name);
    assert_eq!(store.get(&t).await.unwrap(), Some(second), "[{}]", b.name);
    assert_eq!(store.get(&other).await.unwrap(), None, "[{}] tenants are apart", b.name);

    // Over the store: concurrent first uses agree on one secret; a rotation keeps the old one
    // signing for a day.
    use ferry_core::webhook::ROTATION_OVERLAP;
    use ferry_core::webhook_secrets::{rotate, signing_secrets};
    let fresh = tenant("hooks-3");
    let firsts = futures_util::future::join_all((0..4).map(|_| signing_secrets(store, &fresh, T0))).await;
    let firsts: Vec<_> = firsts.into_iter().map(|r| r.unwrap()).collect();
    assert!(firsts.iter().all(|s| s.len() == 1 && s == &firsts[0]), "[{}] one first secret", b.name);
    let rotated = rotate(store, &fresh, T0 + 10).await.unwrap();
    assert_eq!(rotated.len(), 2, "[{}]", b.name);
    assert_eq!(rotated[1], firsts[0][0], "[{}] the old secret second", b.name);
    let day = ROTATION_OVERLAP.as_millis() as u64;
    assert_eq!(signing_secrets(store, &fresh, T0 + 10 + day - 1).await.unwrap(), rotated, "[{}]", b.name);
    let after = signing_secrets(store, &fresh, T0 + 10 + day).await.unwrap();
    assert_eq!(after, vec![rotated[0].clone()], "[{}] only the new one after the overlap", b.name);
}

/// Webhook deliveries: created once per (job, id), read back whole, written compare-and-set
/// on the version, listed by job; endpoints disabled per tenant and enabled again. The webhook
/// queue carries the messages with SQS semantics.
pub async fn case_webhook_deliveries(b: Backend) {
    use ferry_core::deliver::{DeliveryAttempt, DeliveryState, WebhookDelivery, WebhookMessage};
    use ferry_core::webhook::WebhookEvent;
    let store = b.deliveries.as_ref();
    let t = tenant("hooks");
    let (job, other_job) = (JobId::generate(T0), JobId::generate(T0 + 1));
    let delivery = |job: JobId, id: &str, created_at| WebhookDelivery {
        id: id.into(),
        job_id: job,
        tenant: t.clone(),
        event: WebhookEvent::Completed,
        url: format!("https://example.com/{TRICKY_TEXT}"),
        created_at,
        state: DeliveryState::Pending,
        attempts: vec![],
        tries: 0,
        queued: false,
        next_try_at: Some(created_at),
        version: 1,
        retain_until: T0 + 86_400_000,
    };
    let first = delivery(job, &format!("msg_{job}_started"), T0 + 5);
    let second = delivery(job, &format!("msg_{job}_completed"), T0 + 9);
    assert_eq!(store.get(&job, &first.id).await.unwrap(), None, "[{}]", b.name);
    assert!(store.create(&second).await.unwrap(), "[{}]", b.name);
    assert!(store.create(&first).await.unwrap(), "[{}]", b.name);
    assert!(!store.create(&WebhookDelivery { url: "https://other".into(), ..first.clone() }).await.unwrap());
    assert!(store.create(&delivery(other_job, &first.id, T0)).await.unwrap(), "[{}] ids are per job", b.name);
    assert_eq!(store.get(&job, &first.id).await.unwrap(), Some(first.clone()), "[{}]", b.name);

    let tried = WebhookDelivery {
        state: DeliveryState::Delivered,
        attempts: vec![
            DeliveryAttempt {
                at: T0 + 6,
                status: None,
                error: Some("no answer within 15s".into()),
                duration_ms: 15_000,
            },
            DeliveryAttempt { at: T0 + 7, status: Some(204), error: None, duration_ms: 12 },
        ],
        tries: 2,
        queued: true,
        next_try_at: None,
        version: 2,
        ..first.clone()
    };
    assert!(store.update(&tried).await.unwrap(), "[{}]", b.name);
    assert!(!store.update(&tried).await.unwrap(), "[{}] the same version again loses", b.name);
    assert!(!store.update(&WebhookDelivery { version: 4, ..tried.clone() }).await.unwrap(), "[{}]", b.name);
    let missing = delivery(job, "msg_missing", T0);
    assert!(!store.update(&WebhookDelivery { version: 2, ..missing }).await.unwrap(), "[{}] no record", b.name);
    assert_eq!(store.get(&job, &first.id).await.unwrap(), Some(tried.clone()), "[{}]", b.name);
    let mut listed = store.list(&job).await.unwrap();
    listed.sort_by_key(|d| d.created_at);
    assert_eq!(listed, vec![tried, second], "[{}] the job's deliveries only", b.name);

    let url = "https://example.com/hook?x=1";
    assert_eq!(store.disabled_since(&t, url).await.unwrap(), None, "[{}]", b.name);
    store.set_disabled(&t, url, Some(T0 + 3)).await.unwrap();
    assert_eq!(store.disabled_since(&t, url).await.unwrap(), Some(T0 + 3), "[{}]", b.name);
    assert_eq!(store.disabled_since(&tenant("hooks-2"), url).await.unwrap(), None, "[{}] per tenant", b.name);
    assert_eq!(store.disabled_since(&t, "https://example.com/hook").await.unwrap(), None, "[{}] per URL", b.name);
    store.set_disabled(&t, url, None).await.unwrap();
    assert_eq!(store.disabled_since(&t, url).await.unwrap(), None, "[{}] enabled again", b.name);

    let queue = b.webhook_queue.clone();
    let message = WebhookMessage { job_id: job, id: format!("msg_{job}_completed") };
    queue.send(&message).await.unwrap();
    let got = queue.receive(10, std::time::Duration::from_secs(2), std::time::Duration::from_secs(30)).await.unwrap();
    assert_eq!(got.len(), 1, "[{}]", b.name);
    assert_eq!((&got[0].message, got[0].receive_count), (&message, 1), "[{}]", b.name);
    queue.set_visibility(&got[0].receipt, std::time::Duration::ZERO).await.unwrap();
    let again = queue.receive(10, std::time::Duration::from_secs(2), std::time::Duration::from_secs(30)).await.unwrap();
    assert_eq!(again[0].receive_count, 2, "[{}]", b.name);
    queue.delete(&again[0].receipt).await.unwrap();
}
