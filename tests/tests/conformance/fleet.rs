//! The fleet's records: the dispatcher's compare-and-set pool record, executor heartbeats,
//! and the watchdog's scan of non-terminal jobs (`JobStore::active`).

use ferry_core::fleet::{ExecutorActivity, ExecutorRecord, LaunchRecord, PoolState};
use ferry_core::job::JobStatus;
use ferry_core::ports::{Expected, StoreError};
use ferry_tests::backends::Backend;
use ferry_tests::fixtures::job;

pub async fn case_pool_state_compare_and_set(b: Backend) {
    let pool = format!("gpu-{}", b.name);
    assert_eq!(b.pools.pool_state(&pool).await.unwrap(), None);
    let mut s = PoolState { pool: pool.clone(), version: 1, updated_at: 5, ..Default::default() };
    s.launches.push(LaunchRecord { token: "t1".into(), at: 5, count: 2, task_ids: vec![], settled: false });
    b.pools.put_pool_state(&s, None).await.unwrap();
    // A second "first write" loses: someone else created the record.
    let lost = b.pools.put_pool_state(&s, None).await;
    assert!(matches!(lost, Err(StoreError::ConditionFailed { current: None })), "{lost:?}");
    assert_eq!(b.pools.pool_state(&pool).await.unwrap().as_ref(), Some(&s));

    let next = PoolState { version: 2, failures: 1, last_error: Some("RESOURCE:GPU".into()), ..s.clone() };
    b.pools.put_pool_state(&next, Some(1)).await.unwrap();
    // A writer that read version 1 is refused now.
    let stale = PoolState { version: 2, ..s.clone() };
    assert!(matches!(b.pools.put_pool_state(&stale, Some(1)).await, Err(StoreError::ConditionFailed { .. })));
    assert_eq!(b.pools.pool_state(&pool).await.unwrap(), Some(next));
}

pub async fn case_concurrent_pool_writers_one_wins(b: Backend) {
    let pool = "race".to_string();
    let base = PoolState { pool: pool.clone(), version: 1, ..Default::default() };
    b.pools.put_pool_state(&base, None).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..16u32 {
        let (store, base) = (b.pools.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            let next = PoolState { version: 2, failures: i, ..base };
            store.put_pool_state(&next, Some(1)).await.is_ok()
        }));
    }
    let mut wins = 0;
    for t in tasks {
        wins += t.await.unwrap() as u32;
    }
    // Whatever won, the record is one writer's state, whole.
    let stored = b.pools.pool_state(&pool).await.unwrap().unwrap();
    assert_eq!((stored.version, stored.pool.as_str()), (2, "race"));
    assert!(stored.failures < 16);
    if b.name == "embedded" {
        assert_eq!(wins, 1, "sixteen racing writers, one compare-and-set");
    } else {
        // moto does not isolate concurrent conditional writes (README: emulator gaps), so
        // more than one may pass there; DynamoDB lets one through. At least one always does.
        assert!(wins >= 1);
    }
}

fn beat(id: &str, pool: &str, activity: ExecutorActivity, seen_at: u64) -> ExecutorRecord {
    ExecutorRecord {
        id: id.into(),
        pool: pool.into(),
        activity,
        since: seen_at,
        model: None,
        running_jobs: 0,
        started_at: seen_at,
        seen_at,
    }
}

pub async fn case_executor_heartbeats(b: Backend) {
    let arn = "arn:aws:ecs:us-east-1:123456789012:task/ferry/0123456789abcdef";
    b.pools.put_executor(&beat(arn, "gpu", ExecutorActivity::LoadingModel, 1_000)).await.unwrap();
    b.pools.put_executor(&beat("e2", "gpu", ExecutorActivity::Idle, 1_000)).await.unwrap();
    b.pools.put_executor(&beat("e3", "cpu", ExecutorActivity::Busy, 1_000)).await.unwrap();
    // A later beat replaces the earlier one.
    let busy = ExecutorRecord {
        model: Some("llama".into()),
        running_jobs: 1,
        ..beat(arn, "gpu", ExecutorActivity::Busy, 2_000)
    };
    b.pools.put_executor(&busy).await.unwrap();
    let mut gpu = b.pools.executors("gpu").await.unwrap();
    gpu.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(gpu.len(), 2);
    assert_eq!(gpu[0], busy);
    assert_eq!(gpu[1].id, "e2");
    assert_eq!(b.pools.executors("cpu").await.unwrap().len(), 1);
    b.pools.delete_executor(arn).await.unwrap();
    b.pools.delete_executor("never-existed").await.unwrap();
    assert_eq!(b.pools.executors("gpu").await.unwrap().iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["e2"]);
    assert!(b.pools.executors("none").await.unwrap().is_empty());
}

pub async fn case_active_lists_non_terminal_jobs(b: Backend) {
    let tenant = ferry_tests::backends::unique_name();
    let mut queued = Vec::new();
    for _ in 0..5 {
        let j = job(&tenant, JobStatus::Queued);
        b.jobs.create(&j, None).await.unwrap();
        queued.push(j);
    }
    let running = job(&tenant, JobStatus::Running);
    b.jobs.create(&running, None).await.unwrap();
    // One queued job finishes: it leaves the index.
    let mut done = queued.pop().unwrap();
    done.status = JobStatus::Failed;
    done.finished_at = Some(done.created_at + 1);
    b.jobs.update(&done, Expected { status: JobStatus::Queued, attempt: 1 }).await.unwrap();
    // And one moves to running.
    let mut moved = queued.pop().unwrap();
    moved.status = JobStatus::Running;
    moved.lease_until = Some(moved.created_at + 60_000);
    b.jobs.update(&moved, Expected { status: JobStatus::Queued, attempt: 1 }).await.unwrap();

    // Other tests share the backend's table on neither backend, so these are all the jobs.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = b.jobs.active(JobStatus::Queued, 2, after).await.unwrap();
        assert!(page.jobs.len() <= 2);
        seen.extend(page.jobs.iter().map(|j| j.id));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    let want: Vec<_> = queued.iter().map(|j| j.id).collect();
    assert_eq!(seen, want, "queued jobs, oldest first, across pages");
    let mut running_ids: Vec<_> =
        b.jobs.active(JobStatus::Running, 100, None).await.unwrap().jobs.iter().map(|j| j.id).collect();
    running_ids.sort();
    let mut want_running = vec![running.id, moved.id];
    want_running.sort();
    assert_eq!(running_ids, want_running);
    assert!(b.jobs.active(JobStatus::Failed, 100, None).await.unwrap().jobs.is_empty());
}
