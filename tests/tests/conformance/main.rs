//! The port conformance suite: every case is written once, against the port traits, and
//! run on both backends, the embedded adapters (`embedded::*`) and the AWS adapters on
//! moto (`aws::*`). A case that passes on one backend and fails on the other is a bug in
//! an adapter, or a documented emulator gap (see the comments at the cases).
//!
//! AWS cases skip (with a message) when `moto_server` is not installed, except in CI,
//! where they fail. Each case gets a fresh backend, so cases run in parallel.

mod events;
mod fleet;
mod jobs;
mod objects;
mod queue;
mod support;
mod update;

/// Generates `embedded::<name>` and `aws::<name>` tests from `<name> => <module>::<case>`.
macro_rules! conformance {
    ($($name:ident => $module:ident :: $case:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    crate::$module::$case(ferry_tests::backends::embedded()).await;
                }
            )*
        }
        mod aws {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(backend) = ferry_tests::backends::aws().await else {
                        eprintln!("skipping: moto_server not installed");
                        return;
                    };
                    crate::$module::$case(backend).await;
                }
            )*
        }
    };
}

conformance! {
    create_get_round_trip => jobs::case_create_get_round_trip,
    create_duplicate_id => jobs::case_create_duplicate_id,
    idempotent_create => jobs::case_idempotent_create,
    expired_binding_is_replaced => jobs::case_expired_binding_is_replaced,
    rebind_takes_the_key_over => jobs::case_rebind_takes_the_key_over,
    get_missing => jobs::case_get_missing,
    list_pages_newest_first => jobs::case_list_pages_newest_first,
    list_status_filter_across_pages => jobs::case_list_status_filter_across_pages,
    list_tenant_isolation_and_after => jobs::case_list_tenant_isolation_and_after,
    update_writes_lifecycle_fields => update::case_update_writes_lifecycle_fields,
    update_condition_failures => update::case_update_condition_failures,
    update_leaves_immutable_fields => update::case_update_leaves_immutable_fields,
    concurrent_updates_one_wins => update::case_concurrent_updates_one_wins,
    api_keys => jobs::case_api_keys,
    webhook_secrets => jobs::case_webhook_secrets,
    webhook_deliveries => jobs::case_webhook_deliveries,
    append_read_round_trip => events::case_append_read_round_trip,
    read_across_batches => events::case_read_across_batches,
    append_batches => events::case_append_batches,
    update_keeps_last_seq => events::case_update_keeps_last_seq,
    update_with_events => events::case_update_with_events,
    append_condition_failures => events::case_append_condition_failures,
    concurrent_appends_one_wins => events::case_concurrent_appends_one_wins,
    connection_round_trip => events::case_connection_round_trip,
    subscriptions => events::case_subscriptions,
    delete_connection => events::case_delete_connection,
    many_subscribers => events::case_many_subscribers,
    queue_round_trip => queue::case_round_trip,
    receive_empty_waits => queue::case_receive_empty_waits,
    long_poll_wakes_on_send => queue::case_long_poll_wakes_on_send,
    visibility_expiry_redelivers => queue::case_visibility_expiry_redelivers,
    set_visibility_zero => queue::case_set_visibility_zero,
    delete_is_final => queue::case_delete_is_final,
    depth_counts => queue::case_depth_counts,
    dead_letter_after_max_receives => queue::case_dead_letter_after_max_receives,
    batch_receive => queue::case_batch_receive,
    pool_state_compare_and_set => fleet::case_pool_state_compare_and_set,
    concurrent_pool_writers_one_wins => fleet::case_concurrent_pool_writers_one_wins,
    executor_heartbeats => fleet::case_executor_heartbeats,
    active_lists_non_terminal_jobs => fleet::case_active_lists_non_terminal_jobs,
    objects_round_trip => objects::case_objects_round_trip,
    object_urls_need_no_credentials => objects::case_object_urls_need_no_credentials,
    stored_input_and_output_round_trip => objects::case_stored_input_and_output_round_trip,
}
