//! `cargo bench --bench migrate`: pg_dbmigrator against its peers on real,
//! throwaway PostgreSQL servers. See BENCHMARKS.md for what is measured and
//! how; the environment variables below pick a subset for a quick run.
//!
//! * `BENCH_DATASETS` — comma list of `pgbench`, `many<k>` (the many-table
//!   set at scale k) and `tenants<n>` (n schemas of 5 small tables, a
//!   trigger and its function each: schema-per-tenant apps, where catalog
//!   work rather than data dominates); default `pgbench,many1,many3,many10`.
//!   A tenants set raises max_locks_per_transaction on both servers (512,
//!   more past 4000 tenants), since pg_dump locks every table.
//! * `BENCH_CONFIG` — server settings to measure under: `production`
//!   (durable: fsync, synchronous_commit and full_page_writes on,
//!   shared_buffers 1GB, ...), `test` (the testkit's: durability off,
//!   shared_buffers 128MB) or `both` (default: each dataset under one, then
//!   the other, the servers restarted in between; one table per
//!   configuration in the report).
//! * `BENCH_TARGET_MAJOR` — PostgreSQL major of the target server (default:
//!   the source's, i.e. the installed one); another major's server comes
//!   from the testkit's embedded builds (`ensure_embedded_major`), while
//!   every client tool (pg_dump, pg_restore, psql, pgcopydb's) stays the
//!   source's, as when upgrading with the old server's tools. pgcopydb is
//!   tried once on a probe database and shown n/a when it refuses.
//! * `BENCH_RTT_MS` — a comma list of round trips in ms (`0,1,10,50`),
//!   each a full round of the datasets and tools: a distant side goes
//!   through the testkit's proxy, which adds half of it each way (a
//!   distance between hosts, zones or regions); `0` goes straight. Without
//!   a `0` in the list, ours alone also runs straight in every round, for
//!   its own no-delay time in the same run. The harness's own checks go
//!   straight.
//! * `BENCH_NEAR` — where the tools sit, a comma list of `both-far`
//!   (default: the round trip on both links), `source` (next to the
//!   source: the round trip on the target link only) and `target` (the
//!   reverse), crossed with every non-zero `BENCH_RTT_MS`.
//! * `BENCH_TIMEOUT_S` — a tool run still going after this many seconds is
//!   killed (its process group) and reported as "> N s".
//! * `BENCH_READY` — `0` leaves out the `vacuumdb --analyze-only -j N` run
//!   after each migration (the "ready to serve" columns; default on).
//!
//! Every run also records the CPU seconds of the tool's process tree and
//! of each server (see `common::cpu`).
//! * `BENCH_RUNS` — rounds per dataset and configuration (default 3).
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
