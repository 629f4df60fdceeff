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

/// Test hook: when `PG_DBMIGRATOR_TEST_PAUSE_AT` (a comma-separated list)
/// names `point`, the first time it is reached write its name to the file
/// `PG_DBMIGRATOR_TEST_PAUSE_FILE` and wait until the test removes it, so
/// a test can break the network at exactly this point and let the run go
/// on into the fault (a stop point is for a kill; this one is for a fault
/// the run must survive). Points: `schema_batch` (before a batch of schema
/// steps), `verify` (verify's sessions are open on both servers).
pub(crate) async fn test_pause_at(point: &str) {
    static PAUSED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let Ok(points) = std::env::var("PG_DBMIGRATOR_TEST_PAUSE_AT") else {
        return;
    };
    if !points.split(',').any(|p| p == point) {
        return;
    }
    let Ok(file) = std::env::var("PG_DBMIGRATOR_TEST_PAUSE_FILE") else {
        return;
    };
    {
        let mut paused = PAUSED.lock().unwrap();
        if paused.iter().any(|p| p == point) {
            return;
        }
        paused.push(point.to_string());
    }
    eprintln!("TEST_PAUSE_AT {point}");
    let _ = std::fs::write(&file, point);
    while std::path::Path::new(&file).exists() {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
