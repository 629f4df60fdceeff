//! Fault points: every step that changes a server or a file has a name in
//! one registry, [`Point`], and is wrapped by `around` (or marked with
//! `before` and `after`) at the place it happens. A test names a
//! point and a side in an environment variable and the process stops
//! there: `PG_DBMIGRATOR_TEST_KILL_AT` kills it with SIGKILL on the spot,
//! `PG_DBMIGRATOR_TEST_STOP_AT` makes it wait to be killed. The windows
//! that matter are the ones between a side effect and its record; the
//! kill-point sweep (`tests/kill_points.rs`) walks [`Point::ALL`], so a
//! step added to the registry is swept the day it is added.
//!
//! Inert unless one of the variables is set. Touches no server and no
//! resume token (the pause hook writes only the file its test names).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Which run reaches a point (the sweep picks its scenario from this).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// `migrate`, server to server.
    Offline,
    /// `migrate --copy-method dump`: a dump, then a restore.
    ViaArchive,
    /// `dump`, then `restore`.
    Archive,
    /// `migrate --mode online` up to its cutover.
    Online,
    /// `migrate --mode online --fallback`, then `rollback`.
    Fallback,
    /// `migrate --mode online --fallback`, then `finish`.
    Finish,
    /// `cleanup` of an online migration stopped while streaming.
    Cleanup,
    /// `migrate --all-databases` (offline): the points of its own; each
    /// database's migration is an `Offline` one.
    Cluster,
}

/// Which side of a point's side effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Just before the side effect.
    Before,
    /// Just after it, before anything records it.
    After,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Before => "before",
            Side::After => "after",
        }
    }
}

macro_rules! registry {
    ($($v:ident = $name:literal, [$($flow:ident),*], $what:literal;)*) => {
        /// Every named step that changes a server or a file.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Point { $($v),* }

        impl Point {
            /// The registry, in the order a run meets the points.
            pub const ALL: &'static [Point] = &[$(Point::$v),*];

            /// The point's name, as the environment variables spell it.
            pub fn name(self) -> &'static str {
                match self { $(Point::$v => $name),* }
            }

            /// The runs that reach this point.
            pub fn flows(self) -> &'static [Flow] {
                match self { $(Point::$v => &[$(Flow::$flow),*]),* }
            }

            /// What the side effect is.
            pub fn what(self) -> &'static str {
                match self { $(Point::$v => $what),* }
            }
        }
    };
}

registry! {
    ClusterPlan = "cluster_plan", [Cluster],
        "recording a whole-cluster migration's databases (its first record)";
    Globals = "globals", [Cluster],
        "creating the roles, memberships, settings and tablespaces on the target";
    EndEarlierRuns = "end_earlier_runs", [Offline, Online, ViaArchive, Archive],
        "ending the sessions a killed run left on both servers";
    TargetDatabase = "target_database", [Offline, Online, ViaArchive, Archive],
        "creating the target database and setting its properties";
    RecordStart = "record_start", [Offline, Online, ViaArchive, Archive],
        "writing the resume token's first record";
    ReplicaIdentity = "replica_identity", [Online],
        "setting replica identities on the source (--fix-replica-identity)";
    Publication = "publication", [Online],
        "creating the publication on the source";
    Capture = "capture", [Online],
        "installing the schema change capture (event trigger) on the source";
    Slot = "slot", [Online],
        "creating the replication slot";
    PrepareTarget = "prepare_target", [Offline, Online, ViaArchive, Archive],
        "creating our bookkeeping on the target";
    SchemaStep = "schema_step", [Offline, Online, ViaArchive, Archive],
        "a batch of schema statements committed on the target with its markers";
    SchemaPreData = "schema_pre_data", [Offline, Online, ViaArchive, Archive],
        "the schema before the data, all applied";
    DumpSchema = "dump_schema", [ViaArchive, Archive],
        "writing the archive's schema file";
    CopyItem = "copy_item", [Offline, Online, ViaArchive, Archive],
        "a table or page range committed on the target (or written to the archive)";
    IndexBuild = "index_build", [Offline, Online, ViaArchive, Archive],
        "an index or key built on the target with its marker";
    CopyData = "copy_data", [Offline, Online, ViaArchive, Archive],
        "every table copied";
    SchemaPostData = "schema_post_data", [Offline, Online, ViaArchive, Archive],
        "the schema after the data, all applied";
    Sequences = "sequences", [Offline, Online, ViaArchive, Archive],
        "setting the sequences' values on the target";
    LargeObjects = "large_objects", [Offline, Online, ViaArchive, Archive],
        "copying the large objects";
    DumpManifest = "dump_manifest", [ViaArchive, Archive],
        "writing the archive's manifest (the dump is complete)";
    Finalize = "finalize", [Offline, Online, ViaArchive, Archive],
        "removing our bookkeeping from the target";
    Restored = "restored", [ViaArchive],
        "the restore of `migrate --copy-method dump` recorded complete";
    StreamStart = "stream_start", [Online],
        "starting the apply's progress on the target and recording the stream";
    ApplyCommit = "apply_commit", [Online],
        "a streamed transaction committed on the target with its progress";
    CutoverStart = "cutover_start", [Online],
        "recording the cutover's start";
    Fence = "fence", [Online],
        "fencing the source (read-only for every other session)";
    Drain = "drain", [Online],
        "draining the stream to the fence, recorded";
    CutoverSequences = "cutover_sequences", [Online],
        "setting the sequences' values on the target under the fence";
    CutoverRecopy = "cutover_recopy", [Online],
        "copying unlogged tables and large objects again, refreshing materialized views";
    RemoveCapture = "remove_capture", [Online],
        "removing the schema change capture from the source";
    DropSlot = "drop_slot", [Online],
        "dropping the replication slot";
    DropPublication = "drop_publication", [Online],
        "dropping the publication";
    RestoreIdentities = "restore_identities", [Online],
        "restoring the replica identities --fix-replica-identity changed";
    CutoverDone = "cutover_done", [Online, Fallback, Finish],
        "recording the cutover complete";
    FallbackStart = "fallback_start", [Fallback, Finish],
        "creating the reverse publication, slot and capture on the new server";
    ReverseApplyCommit = "reverse_apply_commit", [Fallback, Finish],
        "a transaction streamed back committed on the old source";
    RollbackFence = "rollback_fence", [Fallback],
        "fencing the new server for the rollback";
    RollbackDrain = "rollback_drain", [Fallback],
        "draining the reverse stream to the new server's fence";
    RollbackCopyBack = "rollback_copy_back", [Fallback],
        "copying sequences, unlogged tables and large objects back";
    RemoveReverse = "remove_reverse", [Fallback, Finish],
        "removing the reverse slot, publication and capture";
    Unfence = "unfence", [Fallback],
        "lifting the old source's fence";
    FallbackEnd = "fallback_end", [Fallback, Finish],
        "recording the fallback's end (rollback or finish)";
    Verify = "verify", [Offline, Online, ViaArchive, Fallback],
        "verifying, recorded";
    Seal = "seal", [Offline, Online, ViaArchive, Archive, Fallback, Finish],
        "setting the target database's connection limit and template flag";
    Complete = "complete", [Offline, Online, ViaArchive, Archive, Fallback, Finish],
        "recording the run complete";
    ClusterDatabase = "cluster_database", [Cluster],
        "recording one database of a whole-cluster migration done";
    CleanupSource = "cleanup_source", [Cleanup],
        "removing the slot, publication, capture, identities and fence from the source";
    CleanupTarget = "cleanup_target", [Cleanup],
        "removing our objects and bookkeeping from the target";
    CleanupToken = "cleanup_token", [Cleanup],
        "removing the resume token and the work files";
}

/// The point a test armed, parsed once.
struct Armed {
    spec: String,
    point: String,
    side: String,
    /// Stop at this occurrence (1 = the first time the point is met).
    nth: u64,
    seen: AtomicU64,
    kill: bool,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let (spec, kill) = match std::env::var("PG_DBMIGRATOR_TEST_KILL_AT") {
                Ok(s) => (s, true),
                Err(_) => (std::env::var("PG_DBMIGRATOR_TEST_STOP_AT").ok()?, false),
            };
            let (side, rest) = spec.split_once(':')?;
            let (point, nth) = match rest.split_once('#') {
                Some((p, n)) => (p, n.parse().ok()?),
                None => (rest, 1),
            };
            Some(Armed {
                spec: spec.clone(),
                point: point.to_string(),
                side: side.to_string(),
                nth,
                seen: AtomicU64::new(0),
                kill,
            })
        })
        .as_ref()
}

/// Stop here when a test armed this point and side: kill the process
/// (SIGKILL: nothing is flushed, no destructor runs) or wait forever.
pub(crate) async fn hit(point: Point, side: Side) {
    let Some(a) = armed() else { return };
    if a.point != point.name() || a.side != side.as_str() {
        return;
    }
    if a.seen.fetch_add(1, Ordering::AcqRel) + 1 != a.nth {
        return;
    }
    eprintln!("TEST_STOP_AT {}", a.spec);
    if a.kill {
        // The shell's own `kill` (no unsafe code here, no procps needed).
        let _ = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("kill -KILL {}", std::process::id()))
            .status();
    }
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
    }
}

/// Just before `point`'s side effect.
pub(crate) async fn before(point: Point) {
    hit(point, Side::Before).await
}

/// Just after `point`'s side effect, before it is recorded.
pub(crate) async fn after(point: Point) {
    hit(point, Side::After).await
}

/// Run `work` (the side effect) between the point's two sides.
pub(crate) async fn around<T, E>(
    point: Point,
    work: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    before(point).await;
    let r = work.await?;
    after(point).await;
    Ok(r)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_names_each_point_once_and_each_reaches_a_run() {
        let mut names: Vec<_> = Point::ALL.iter().map(|p| p.name()).collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n, "a point name is used twice");
        for p in Point::ALL {
            assert!(!p.flows().is_empty(), "{} is reached by no run", p.name());
            assert!(!p.what().is_empty());
        }
    }

    /// Every point in the registry is placed in the code, and every place
    /// names a registered point (the enum makes the second a compile error;
    /// this catches a registered point nobody calls).
    #[test]
    fn every_registered_point_is_placed() {
        let mut text = String::new();
        let mut dirs = vec![std::path::PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src"
        ))];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    dirs.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") && !p.ends_with("faults.rs") {
                    text.push_str(&std::fs::read_to_string(&p).unwrap());
                }
            }
        }
        for p in Point::ALL {
            assert!(
                text.contains(&format!("Point::{p:?}")),
                "fault point {} ({p:?}) is registered but never placed",
                p.name()
            );
        }
    }
}
