//! pg_dbmigrator embedded in a Rust service, through the crate root's API
//! only: four tasks against real servers.
//!
//! 1. an offline migration, with live progress (percent, rate, ETA);
//! 2. an online migration cut over from code, printing the write downtime;
//! 3. failures told apart by `kind()` and `is_retryable()`;
//! 4. a run cancelled mid-copy, then resumed to the end.
//!
//! The servers are given as connection strings (key=value, as libpq):
//!
//!     EMBED_SOURCE='host=... dbname=shop ...'         # tasks 1, 3, 4
//!     EMBED_TARGET='host=... dbname=shop_copy ...'    # task 1 (empty)
//!     EMBED_RESUME_TARGET='host=... dbname=shop_r'    # task 4 (empty)
//!     EMBED_ONLINE_SOURCE=... EMBED_ONLINE_TARGET=... # task 2 (optional;
//!                                                     # wal_level = logical)
//!     cargo run --example embed
//!
//! `tests/embed_example.rs` runs it against throwaway servers.

use pg_dbmigrator::{
    discard_files, human_bytes, ErrorKind, MigrationConfig, MigrationError, Migrator, Phase,
};
use tokio_util::sync::CancellationToken;

type Error = Box<dyn std::error::Error>;

fn var(name: &str) -> Result<String, Error> {
    std::env::var(name).map_err(|_| format!("set {name} to a connection string").into())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let source = var("EMBED_SOURCE")?;
    // Every run's files (resume token, summary, work directory) go here;
    // by default they would go under the temp dir, named after the run.
    let work = tempfile::tempdir()?;

    offline_with_progress(&source, &var("EMBED_TARGET")?, work.path()).await?;
    match (
        std::env::var("EMBED_ONLINE_SOURCE"),
        std::env::var("EMBED_ONLINE_TARGET"),
    ) {
        (Ok(s), Ok(t)) => online_with_cutover(&s, &t, work.path()).await?,
        _ => println!("task 2: skipped (EMBED_ONLINE_SOURCE / EMBED_ONLINE_TARGET not set)"),
    }
    classify_errors(&source, &var("EMBED_TARGET")?, work.path()).await?;
    cancel_then_resume(&source, &var("EMBED_RESUME_TARGET")?, work.path()).await?;
    println!("all tasks done");
    Ok(())
}

/// Task 1. The builder checks the settings before anything connects.
async fn offline_with_progress(
    source: &str,
    target: &str,
    work: &std::path::Path,
) -> Result<(), Error> {
    let config = MigrationConfig::offline(source, target)
        .jobs(2)
        .dump_path(work.join("offline"))
        .build()?;
    let migrator = Migrator::new(config.clone());
    // A watch receiver: reading it never slows the run, and a slow reader
    // only skips to the newest snapshot.
    let mut progress = migrator.subscribe();
    let printer = tokio::spawn(async move {
        let mut last_printed = -10.0;
        while progress.changed().await.is_ok() {
            let s = progress.borrow_and_update().clone();
            let Some(pct) = s.percent().filter(|_| s.phase == Some(Phase::CopyData)) else {
                continue;
            };
            // Every 10% is enough for a log; a UI would redraw each time.
            if pct - last_printed >= 10.0 || (pct >= 100.0 && last_printed < 100.0) {
                last_printed = pct;
                let rate = s.rate().map(|r| human_bytes(r as u64)).unwrap_or_default();
                let eta = s
                    .eta()
                    .map(|d| format!("{}s", d.as_secs()))
                    .unwrap_or_default();
                println!("task 1: copy {pct:5.1}%  {rate}/s  eta {eta}");
            }
        }
    });
    let report = migrator.run(CancellationToken::new()).await;
    // The subscription outlives the run (it ends with the Migrator): stop
    // the printer here rather than wait for it.
    printer.abort();
    let report = report?;
    let clean = report.verify.as_ref().is_some_and(|v| v.is_clean());
    println!(
        "task 1: offline: {} rows, {} tables in {:.1}s, verify clean: {clean}",
        report.rows,
        report.tables.len(),
        report.seconds
    );
    // The report is ours now: drop the run's files (refused if it had not completed).
    let removed = discard_files(&config, false)?;
    println!(
        "task 1: removed {} file(s) of the run",
        removed.removed.len()
    );
    Ok(())
}

/// Task 2. A manual cutover: the service decides when (after its own
/// checks, or once it has stopped writes if `fence(false)`).
async fn online_with_cutover(
    source: &str,
    target: &str,
    work: &std::path::Path,
) -> Result<(), Error> {
    let config = MigrationConfig::online(source, target)
        .jobs(2)
        .dump_path(work.join("online"))
        .build()?;
    let migrator = std::sync::Arc::new(Migrator::new(config));
    // Taken before `run`: it is how this code talks to the running migration.
    let handle = migrator.cutover_handle();
    let m = migrator.clone();
    let run = tokio::spawn(async move { m.run(CancellationToken::new()).await });
    // A request during the copy would be refused, not queued: wait until
    // streaming has caught up.
    handle.wait_caught_up().await?;
    println!("task 2: online: caught up, asking for the cutover");
    let done = handle.request().await?;
    println!(
        "task 2: online: cut over, writes blocked for {} ms (fence at {})",
        done.downtime.as_millis(),
        done.fence_lsn.unwrap_or_default()
    );
    let report = run.await??;
    println!(
        "task 2: online: {} rows copied, then streamed until the cutover",
        report.rows
    );
    Ok(())
}

/// Task 3. What to do with a failure depends on its kind, not its text.
async fn classify_errors(source: &str, target: &str, work: &std::path::Path) -> Result<(), Error> {
    // Later key=value settings win, as in libpq: the same source, broken two ways.
    let cases = [
        (
            "unreachable port",
            format!("{source} host=127.0.0.1 port=1 connect_timeout=2"),
        ),
        (
            "wrong password",
            format!("{source} password=not-the-password"),
        ),
    ];
    for (i, (what, conninfo)) in cases.iter().enumerate() {
        let config = MigrationConfig::offline(conninfo.as_str(), target)
            .dump_path(work.join(format!("failing{i}")))
            .build()?;
        let Err(e) = Migrator::new(config).run(CancellationToken::new()).await else {
            return Err(format!("task 3: {what}: the run succeeded").into());
        };
        println!(
            "task 3: {what}: kind={:?} retryable={} ({})",
            e.kind(),
            e.is_retryable(),
            advice(&e)
        );
    }
    // A bad setting is refused by build(), before any connection.
    let e = MigrationConfig::offline(source, target)
        .jobs(0)
        .build()
        .unwrap_err();
    println!(
        "task 3: jobs(0): kind={:?} retryable={} ({e})",
        e.kind(),
        e.is_retryable()
    );
    Ok(())
}

fn advice(e: &MigrationError) -> &'static str {
    match e.kind() {
        _ if e.is_retryable() => "try again later with resume",
        ErrorKind::Authentication | ErrorKind::Configuration => "fix the settings",
        ErrorKind::Connection => "check the address",
        _ => "page someone",
    }
}

/// Task 4. Cancelling saves the resume token; the same configuration with
/// `resume` continues from it instead of starting over.
async fn cancel_then_resume(
    source: &str,
    target: &str,
    work: &std::path::Path,
) -> Result<(), Error> {
    let config = MigrationConfig::offline(source, target)
        .jobs(2)
        .dump_path(work.join("resumable"))
        .build()?;
    let migrator = Migrator::new(config.clone());
    let cancel = CancellationToken::new();
    let mut progress = migrator.subscribe();
    let c = cancel.clone();
    // Cancel as soon as some data has moved: a shutdown in the middle of the copy.
    tokio::spawn(async move {
        while progress.changed().await.is_ok() {
            let s = progress.borrow_and_update().clone();
            if s.phase == Some(Phase::CopyData) && s.heap_bytes_done > 0 {
                println!("task 4: cancelling at {:.1}%", s.percent().unwrap_or(0.0));
                c.cancel();
                break;
            }
        }
    });
    match migrator.run(cancel).await {
        Err(e) if e.kind() == ErrorKind::Cancelled => println!("task 4: cancelled; token saved"),
        Err(e) => return Err(e.into()),
        Ok(_) => return Err("task 4: the run finished before the cancel".into()),
    }
    let resumed = MigrationConfig {
        resume: true,
        ..config
    };
    let report = Migrator::new(resumed).run(CancellationToken::new()).await?;
    println!(
        "task 4: resumed={} and finished ({} rows copied after the resume), verify clean: {}",
        report.resumed,
        report.rows,
        report.verify.as_ref().is_some_and(|v| v.is_clean())
    );
    Ok(())
}
