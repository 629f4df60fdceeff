//! What a run reports: the offline, online, dump and restore orchestrators
//! fill a [`MigrationReport`] from their stages' results; the binary prints
//! its summary and `--json` emits it. Formatting only: no database work.

use std::path::PathBuf;

use serde::Serialize;

use crate::error::{MigrationError, Result};
use crate::progress::{human_bytes, PressureSummary};
use crate::resume::Stage;

pub use crate::copy::{TableResult, WireFormat};
pub use crate::globals::{Difference as GlobalsDifference, GlobalsReport};
#[doc(hidden)]
pub use crate::progress::{largest, OtherTables, LISTED_TABLES};
pub use crate::replication::source::CleanupReport;
pub use crate::resume::{NewIdentity, ReplicaIdentityFix};
pub use crate::verify::{DiffKind, Difference, TableCheck, VerifyReport};

/// What a finished migration did.
#[derive(Debug, Clone)]
pub struct MigrationReport {
    /// The migration's id: a hash of what it migrates (source, target,
    /// filters), the name its work dir, token and sessions carry.
    pub migration_id: String,
    /// The work dir (`MigrationConfig::dump_path`, or the one chosen for it).
    pub dump_path: PathBuf,
    /// The resume token: what a `--resume` continues from.
    pub token_path: PathBuf,
    /// This run continued an earlier, interrupted one.
    pub resumed: bool,
    /// The exported snapshot the copy read (`pg_export_snapshot()`).
    pub snapshot_id: Option<String>,
    /// `server_version_num` of the source, e.g. 150004.
    pub source_version: i32,
    /// `server_version_num` of the target.
    pub target_version: i32,
    /// Tables copied in this run (tables finished by an earlier attempt are
    /// in `skipped_tables`).
    pub tables: Vec<TableResult>,
    /// Tables an earlier attempt had already copied (quoted names).
    pub skipped_tables: Vec<String>,
    /// Sequences whose values were set on the target.
    pub sequences: usize,
    /// Large objects copied.
    pub large_objects: usize,
    /// Their size.
    pub large_object_bytes: u64,
    /// Rows copied in this run (all tables).
    pub rows: u64,
    /// COPY bytes moved in this run.
    pub bytes: u64,
    /// Schema objects created on the target in this run (full migrations).
    pub schema_steps: usize,
    /// What the filters brought along or left out of the schema.
    pub schema_notes: Vec<String>,
    /// Seconds each stage took in this run, in order, by the stage's name
    /// ([`crate::Phase`]'s `Display`: `copy_data`, `stream`, ...).
    pub stages: Vec<(String, f64)>,
    /// Seconds the whole run took.
    pub seconds: f64,
    /// What the closing `verify` found (`None` with `VerifyLevel::None`).
    pub verify: Option<VerifyReport>,
    /// Online migrations: the streaming and the cutover.
    pub online: Option<OnlineReport>,
    /// `--resume` of a migration its token records complete: nothing was
    /// done (the finishing run's report is in `summary_path`).
    pub already_complete: bool,
    /// Set when the copy is not one point in time: the source session
    /// holding the exported snapshot was lost in the middle of the copy and
    /// the tables not yet copied were read on a new snapshot (without
    /// `--strict-snapshot`). Says which tables were read on which.
    pub snapshot_note: Option<String>,
    /// A whole-cluster migration: each database's own report, in the
    /// order they were migrated (the fields above add them up).
    pub databases: Vec<DatabaseReport>,
    /// A whole-cluster migration: what the globals stage did (roles,
    /// memberships, settings, tablespaces); `None` when an earlier run of
    /// it had done them already.
    pub globals: Option<GlobalsReport>,
    /// Where the target's optimizer statistics came from (`None` when the
    /// run made none: `Statistics::None`, or not reached).
    pub statistics: Option<StatisticsReport>,
    /// `--source-pressure`: how long the copy was paused to spare the
    /// source, how often, and which signals crossed their threshold
    /// (`None`: off).
    pub source_pressure: Option<PressureSummary>,
    /// The round trips this run's SQL sessions made to the two servers
    /// (`None` for a run that did nothing, dump and restore): what a
    /// distance between the tool and the servers costs, RTT times this.
    pub round_trips: Option<RoundTrips>,
}

/// Round trips a run made: a turn of a session, from the moment it wrote
/// to the server's first answer (statements pipelined together and
/// answered together count once, as they cost one RTT). Connecting counts
/// too; replication streams do not (the server pushes there).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RoundTrips {
    /// All of them.
    pub total: u64,
    /// By the stage the run was in (`preflight` before the first), in the
    /// order first entered; a stage with none is left out.
    pub by_stage: Vec<(String, u64)>,
}

impl RoundTrips {
    /// `other` added: a cluster's are its databases' summed.
    pub(crate) fn add(&mut self, other: &RoundTrips) {
        self.total += other.total;
        for (stage, n) in &other.by_stage {
            match self.by_stage.iter_mut().find(|(s, _)| s == stage) {
                Some((_, m)) => *m += n,
                None => self.by_stage.push((stage.clone(), *n)),
            }
        }
    }
}

/// The target's optimizer statistics after the load.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StatisticsReport {
    /// Tables whose statistics were carried from the source
    /// (`Statistics::Carry` on a PostgreSQL 18+ target), their indexes'
    /// with them: no ANALYZE ran on them.
    pub carried_tables: usize,
    /// Tables analyzed, each with why (no source statistics to carry,
    /// extended statistics, or ANALYZE asked for).
    pub analyzed_tables: Vec<(String, String)>,
    /// Seconds the carry (and the ANALYZEs it left) took.
    pub seconds: f64,
    /// Online: what the cutover found of the statistics the copy gave the
    /// target, once the writes had moved (`None` offline, or when it could
    /// not look: then autovacuum sees to them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after_cutover: Option<StatisticsAfterCutover>,
}

/// Online, after the cutover: the stream changed tables since the copy
/// gave them statistics. Those changed less than autovacuum's threshold on
/// the source keep them; those the source analyzed again since have the
/// newer ones carried (PostgreSQL 18+ targets); the rest are analyzed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StatisticsAfterCutover {
    /// Tables whose newer source statistics were carried.
    pub carried_tables: usize,
    /// Tables analyzed on the target, each with why.
    pub analyzed_tables: Vec<(String, String)>,
    /// Tables whose statistics were left as the copy gave them.
    pub unchanged_tables: usize,
    /// Seconds it took (after the handover: no write waited for it).
    pub seconds: f64,
}

/// One database of a whole-cluster migration.
#[derive(Debug, Clone, Serialize)]
pub struct DatabaseReport {
    /// The database's name.
    pub name: String,
    /// What its migration did.
    pub report: MigrationReport,
}

impl Serialize for MigrationReport {
    /// As the fields, but with the [`LISTED_TABLES`] largest tables listed
    /// and the others in `other_tables`.
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Repr<'a> {
            migration_id: &'a str,
            dump_path: &'a PathBuf,
            token_path: &'a PathBuf,
            resumed: bool,
            snapshot_id: &'a Option<String>,
            source_version: i32,
            target_version: i32,
            tables: Vec<&'a TableResult>,
            #[serde(skip_serializing_if = "Option::is_none")]
            other_tables: Option<OtherTables>,
            skipped_tables: &'a [String],
            sequences: usize,
            large_objects: usize,
            large_object_bytes: u64,
            rows: u64,
            bytes: u64,
            schema_steps: usize,
            #[serde(skip_serializing_if = "<[String]>::is_empty")]
            schema_notes: &'a [String],
            stages: &'a [(String, f64)],
            seconds: f64,
            verify: &'a Option<VerifyReport>,
            online: &'a Option<OnlineReport>,
            #[serde(skip_serializing_if = "std::ops::Not::not")]
            already_complete: bool,
            /// Every table was read on the one snapshot.
            point_in_time: bool,
            #[serde(skip_serializing_if = "Option::is_none")]
            snapshot_note: &'a Option<String>,
            #[serde(skip_serializing_if = "<[DatabaseReport]>::is_empty")]
            databases: &'a [DatabaseReport],
            #[serde(skip_serializing_if = "Option::is_none")]
            globals: &'a Option<GlobalsReport>,
            #[serde(skip_serializing_if = "Option::is_none")]
            statistics: &'a Option<StatisticsReport>,
            #[serde(skip_serializing_if = "Option::is_none")]
            source_pressure: &'a Option<PressureSummary>,
            round_trips: &'a Option<RoundTrips>,
        }
        let (tables, other_tables) = largest(
            &self.tables,
            |t| t.bytes,
            |o, t| {
                o.rows += t.rows;
                o.bytes += t.bytes;
            },
        );
        Repr {
            migration_id: &self.migration_id,
            dump_path: &self.dump_path,
            token_path: &self.token_path,
            resumed: self.resumed,
            snapshot_id: &self.snapshot_id,
            source_version: self.source_version,
            target_version: self.target_version,
            tables,
            other_tables,
            skipped_tables: &self.skipped_tables,
            sequences: self.sequences,
            large_objects: self.large_objects,
            large_object_bytes: self.large_object_bytes,
            rows: self.rows,
            bytes: self.bytes,
            schema_steps: self.schema_steps,
            schema_notes: &self.schema_notes,
            stages: &self.stages,
            seconds: self.seconds,
            verify: &self.verify,
            online: &self.online,
            already_complete: self.already_complete,
            point_in_time: self.snapshot_note.is_none(),
            snapshot_note: &self.snapshot_note,
            databases: &self.databases,
            globals: &self.globals,
            statistics: &self.statistics,
            source_pressure: &self.source_pressure,
            round_trips: &self.round_trips,
        }
        .serialize(s)
    }
}

impl MigrationReport {
    /// The answer to `--resume` of a migration whose token (at
    /// `token_path`) records it complete: nothing to do, and no error.
    pub(crate) fn already_complete(
        token: &crate::resume::ResumeToken,
        token_path: PathBuf,
    ) -> Self {
        MigrationReport {
            resumed: true,
            snapshot_id: token.snapshot_name.clone(),
            skipped_tables: token.copied.keys().cloned().collect(),
            already_complete: true,
            ..MigrationReport::empty(
                token.migration_id.clone(),
                token.dump_path.clone(),
                token_path,
            )
        }
    }

    /// A report of nothing done yet, to be filled in.
    pub(crate) fn empty(migration_id: String, dump_path: PathBuf, token_path: PathBuf) -> Self {
        MigrationReport {
            migration_id,
            dump_path,
            token_path,
            resumed: false,
            snapshot_id: None,
            source_version: 0,
            target_version: 0,
            tables: Vec::new(),
            skipped_tables: Vec::new(),
            sequences: 0,
            large_objects: 0,
            large_object_bytes: 0,
            rows: 0,
            bytes: 0,
            schema_steps: 0,
            schema_notes: Vec::new(),
            stages: Vec::new(),
            seconds: 0.0,
            verify: None,
            online: None,
            already_complete: false,
            snapshot_note: None,
            databases: Vec::new(),
            globals: None,
            statistics: None,
            source_pressure: None,
            round_trips: None,
        }
    }

    /// Where the report is kept as JSON: beside the resume token,
    /// `<dump-path>.summary.json`.
    pub fn summary_path(&self) -> PathBuf {
        let mut s = self.dump_path.as_os_str().to_owned();
        s.push(".summary.json");
        PathBuf::from(s)
    }

    /// Write the report as JSON to [`summary_path`](Self::summary_path)
    /// (atomically: a reader never sees half of it).
    pub(crate) fn save_summary(&self) -> Result<()> {
        let path = self.summary_path();
        let json = serde_json::to_vec_pretty(self).expect("report serializes");
        let tmp = path.with_extension("json.partial");
        std::fs::write(&tmp, json)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| MigrationError::io(format!("writing the summary {}", path.display()), e))
    }

    /// Bytes per second over the copy stage.
    pub fn throughput(&self) -> f64 {
        let copy = self
            .stages
            .iter()
            .find(|(s, _)| s == Stage::CopyData.as_str())
            .map(|s| s.1)
            .unwrap_or(self.seconds);
        if copy > 0.0 {
            self.bytes as f64 / copy
        } else {
            0.0
        }
    }

    /// A human summary for the terminal.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        if self.already_complete {
            let path = self.summary_path();
            return format!(
                "migration {} is already complete: nothing left to do{}\n",
                self.migration_id,
                if path.exists() {
                    format!(" (its report: {})", path.display())
                } else {
                    String::new()
                }
            );
        }
        s.push_str(&format!(
            "migration {} {} in {:.1}s\n",
            self.migration_id,
            if self.resumed {
                "resumed and finished"
            } else {
                "finished"
            },
            self.seconds
        ));
        s.push_str(&format!(
            "  tables: {} copied ({} rows, {}), {} already done; sequences: {}; large objects: {} ({})\n",
            self.tables.len(),
            self.rows,
            human_bytes(self.bytes),
            self.skipped_tables.len(),
            self.sequences,
            self.large_objects,
            human_bytes(self.large_object_bytes)
        ));
        s.push_str(&format!(
            "  throughput: {}/s\n",
            human_bytes(self.throughput() as u64)
        ));
        if let Some(note) = &self.snapshot_note {
            s.push_str(&format!("  snapshot: {note}\n"));
        }
        if let Some(st) = &self.statistics {
            s.push_str(&format!(
                "  statistics: carried from the source for {} table(s), {} analyzed ({:.2}s)\n",
                st.carried_tables,
                st.analyzed_tables.len(),
                st.seconds
            ));
            for (t, why) in &st.analyzed_tables {
                s.push_str(&format!("    analyzed {t}: {why}\n"));
            }
            if let Some(a) = &st.after_cutover {
                s.push_str(&format!(
                    "  statistics after the cutover: {} table(s) kept, {} carried again, {} analyzed ({:.2}s)\n",
                    a.unchanged_tables,
                    a.carried_tables,
                    a.analyzed_tables.len(),
                    a.seconds
                ));
                for (t, why) in &a.analyzed_tables {
                    s.push_str(&format!("    analyzed {t}: {why}\n"));
                }
            }
        }
        if let Some(p) = &self.source_pressure {
            s.push_str(&format!(
                "  source pressure: the copy was paused {:.1}s in {} pause(s){}\n",
                p.paused_seconds,
                p.pauses,
                if p.signals.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; over a threshold: {}",
                        p.signals
                            .iter()
                            .map(|s| s.describe())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            ));
        }
        for note in &self.schema_notes {
            s.push_str(&format!("  filters: {note}\n"));
        }
        for t in self.tables.iter().filter(|t| t.loaded_into.is_some()) {
            s.push_str(&format!(
                "  re-shaped: {} loaded into {} on the target ({:?} COPY, no FREEZE)\n",
                t.table,
                t.loaded_into.as_deref().unwrap_or_default(),
                t.format
            ));
        }
        for (name, secs) in &self.stages {
            s.push_str(&format!("  stage {name:<17} {secs:>8.2}s\n"));
        }
        if let Some(rt) = &self.round_trips {
            let stages: Vec<String> = rt
                .by_stage
                .iter()
                .map(|(n, c)| format!("{n} {c}"))
                .collect();
            s.push_str(&format!(
                "  round trips: {} ({})\n",
                rt.total,
                stages.join(", ")
            ));
        }
        let mut largest: Vec<&TableResult> = self.tables.iter().collect();
        largest.sort_by_key(|t| std::cmp::Reverse(t.bytes));
        if !largest.is_empty() {
            s.push_str("  largest tables:\n");
        }
        for t in largest.iter().take(5) {
            let rate = if t.seconds > 0.0 {
                t.bytes as f64 / t.seconds / 1e6
            } else {
                0.0
            };
            s.push_str(&format!(
                "    {:<40} {:>10} rows {:>10} {:>7.2}s {:>8.1} MB/s {:?}\n",
                t.table,
                t.rows,
                human_bytes(t.bytes),
                t.seconds,
                rate,
                t.format
            ));
        }
        match &self.verify {
            Some(v) if v.is_clean() => s.push_str(&format!(
                "  verify ({:?}): 0 differences in {} tables, {} sequences, {} large objects\n",
                v.level.unwrap_or_default(),
                v.tables.len(),
                v.sequences,
                v.large_objects
            )),
            Some(v) => {
                s.push_str(&format!(
                    "  verify: {} difference(s)\n",
                    v.differences.len()
                ));
                s.push_str(&v.differences_table());
            }
            None => s.push_str("  verify: skipped\n"),
        }
        if let Some(v) = &self.verify {
            let line = v.outside_filters_line();
            if !line.is_empty() {
                s.push_str(&format!("  {line}"));
            }
        }
        if let Some(o) = &self.online {
            s.push_str(&o.summary());
        }
        s.push_str(&format!("  resume token: {}\n", self.token_path.display()));
        if self.summary_path().exists() {
            // (Absent with `no_summary`.)
            s.push_str(&format!(
                "  summary (JSON): {}\n",
                self.summary_path().display()
            ));
        }
        s
    }
}

/// What the online part of a migration did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OnlineReport {
    /// The logical replication slot on the source (dropped by the cutover).
    pub slot: String,
    /// The publication on the source (dropped by the cutover).
    pub publication: String,
    /// The switch-over.
    pub cutover: CutoverSummary,
    /// The changes applied while streaming.
    pub apply: ApplySummary,
    /// Tables without a key whose replica identity was set for the run
    /// (and restored at its end).
    pub replica_identity_fixes: Vec<ReplicaIdentityFix>,
    /// `--fallback`: how the reverse stream ended.
    pub fallback: Option<FallbackSummary>,
}

/// How a `--fallback` ended.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FallbackSummary {
    /// `rollback` or `finish`.
    pub ended_by: String,
    /// Rollback: writes blocked on the new server until the old source
    /// was writable again.
    pub rollback_downtime_seconds: Option<f64>,
    /// Transactions of the new server applied back on the old source.
    pub transactions_streamed_back: u64,
}

/// The cutover: fence the source, drain, sync sequences, hand over.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CutoverSummary {
    /// The source's WAL position after the fence: everything before it is on the target.
    pub fence_lsn: Option<String>,
    /// Writes blocked on the source: from the fence to the end of the cutover.
    pub downtime_seconds: f64,
    /// The source was left fenced (writes refused) after the cutover, as
    /// asked; `unfence` lifts it.
    pub fenced: bool,
}

/// The streaming apply of the source's changes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ApplySummary {
    /// Source transactions applied.
    pub transactions: u64,
    /// Rows they inserted, updated or deleted.
    pub rows: u64,
    /// Seconds of streaming.
    pub seconds: f64,
    /// `transactions / seconds`.
    pub transactions_per_second: f64,
    /// Streaming sessions after the first (dropped connections).
    pub reconnects: u64,
    /// Schema changes made on the source while streaming, replayed here.
    pub schema_changes: u64,
}

impl OnlineReport {
    /// A human summary for the terminal.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "  applied: {} transactions, {} rows in {:.1}s ({:.0} transactions/s), {} reconnect(s), {} schema change(s)\n",
            self.apply.transactions,
            self.apply.rows,
            self.apply.seconds,
            self.apply.transactions_per_second,
            self.apply.reconnects,
            self.apply.schema_changes
        );
        s.push_str(&format!(
            "  write downtime: {:.3}s{}\n",
            self.cutover.downtime_seconds,
            if self.cutover.fenced {
                ""
            } else {
                " (no fence: writes were stopped by the operator)"
            }
        ));
        if let Some(l) = &self.cutover.fence_lsn {
            s.push_str(&format!("  fence LSN: {l}\n"));
        }
        if self.cutover.fenced {
            s.push_str("  the source stays read-only; `pg_dbmigrator unfence --source ...` lifts it (rollback)\n");
        }
        s
    }
}
