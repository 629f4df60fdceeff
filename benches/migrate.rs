//! `cargo bench --bench migrate`: pg_dbmigrator against its peers on real,
//! throwaway PostgreSQL servers. See BENCHMARKS.md for what is measured and
//! how; the environment variables below pick a subset for a quick run.
//!
//! * `BENCH_DATASETS` — comma list of `pgbench` and `many<k>` (the many-table
//!   set at scale k); default `pgbench,many1,many3,many10`.
//! * `BENCH_RUNS` — rounds per dataset (default 3).
//! * `BENCH_JOBS` — `--jobs` for every tool (default 2).
//! * `BENCH_TOOLS` — comma list to restrict the tools (names as in the
//!   report: stream, dump-method, pg_dump+pg_restore, pg_dump|psql, pgcopydb,
//!   archive, floor); default all.
//! * `BENCH_PGBENCH_SCALE` — pgbench scale (default 30).
//! * `BENCH_BIN` — benchmark this pg_dbmigrator binary instead of the one
//!   cargo builds from this checkout.
//! * `BENCH_WORKDIR` — where dumps and staging files go (default: a fresh
//!   directory in the temp dir, deleted at the end).

mod common;

fn main() {
    if let Err(e) = common::run() {
        eprintln!("bench failed: {e:#}");
        std::process::exit(1);
    }
}
