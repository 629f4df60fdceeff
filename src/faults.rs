//! Fault points for the tests' kill -9 runs: named places in the pipeline
//! where a test can make the process stop and wait to be killed. Inert
//! unless `PG_DBMIGRATOR_TEST_STOP_AT` names the point.

/// Test hook: when `PG_DBMIGRATOR_TEST_STOP_AT` names `point`, say so on
/// stderr and wait forever, so a test can kill -9 the process at exactly
/// this point. Points: `after_slot`, `mid_copy`, `after_copy`,
/// `after_apply_commit`, `mid_cutover`, `after_slot_drop` (the cutover
/// dropped the slot, the token does not say so yet), `after_cutover` (the
/// cutover is recorded, the migration is not), `after_restore`
/// (`--copy-method dump`: the restore is recorded complete, the migration's
/// verify and seal are not done).
pub(crate) async fn test_stop_at(point: &str) {
    if std::env::var("PG_DBMIGRATOR_TEST_STOP_AT").is_ok_and(|v| v == point) {
        eprintln!("TEST_STOP_AT {point}");
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        }
    }
}
