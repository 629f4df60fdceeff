//! `cargo bench --bench cluster`: a whole cluster, `migrate --all-databases`
//! against `pg_dumpall | psql`, on two throwaway servers in the same run
//! (see BENCHMARKS.md). The cluster: `BENCH_SMALL` small databases (three
//! tables of 2,000 rows each, default 20), `BENCH_BIG` pgbench databases
//! (default 2, at `BENCH_PGBENCH_SCALE`, default 10) and five roles with
//! passwords and memberships. Each tool starts from an empty target
//! (every database and role of an earlier run dropped); `BENCH_RUNS`
//! rounds (default 2), the median reported. `BENCH_JOBS` (default 2) is
//! pg_dbmigrator's `--jobs`; pg_dumpall has no parallelism. pg_dbmigrator
//! runs with `--verify none`, as in the single-database bench, and keeps
//! its ANALYZE (pg_dumpall | psql leaves the statistics empty).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pg_dbmigrator::testkit::{self, Cluster, ClusterOptions};

fn env_num(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn psql(bin: &Path, conninfo: &str, sql: &str) {
    let out = Command::new(bin.join("psql"))
        .args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            conninfo,
            "-c",
            sql,
        ])
        .output()
        .expect("running psql");
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn names(bin: &Path, conninfo: &str, sql: &str) -> Vec<String> {
    let out = Command::new(bin.join("psql"))
        .args(["-X", "-q", "-A", "-t", "-d", conninfo, "-c", sql])
        .output()
        .expect("running psql");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// The target as new: no database or role of an earlier run.
fn reset_target(bin: &Path, tgt: &Cluster) {
    let admin = tgt.conninfo("postgres");
    for db in names(
        bin,
        &admin,
        "SELECT quote_ident(datname) FROM pg_database WHERE datname NOT IN ('postgres', 'template0', 'template1')",
    ) {
        psql(bin, &admin, &format!("DROP DATABASE {db} WITH (FORCE)"));
    }
    for role in names(
        bin,
        &admin,
        "SELECT quote_ident(rolname) FROM pg_roles WHERE oid <> 10 AND rolname !~ '^pg_'",
    ) {
        psql(
            bin,
            &admin,
            &format!("DROP OWNED BY {role}; DROP ROLE {role}"),
        );
    }
}

fn build_source(bin: &Path, src: &Cluster, small: u32, big: u32, scale: u32) {
    let admin = src.conninfo("postgres");
    psql(
        bin,
        &admin,
        "CREATE ROLE app LOGIN PASSWORD 'app pw'; CREATE ROLE reporting NOLOGIN; \
         CREATE ROLE analyst LOGIN PASSWORD 'an pw' IN ROLE reporting; \
         CREATE ROLE ops LOGIN PASSWORD 'ops pw' CREATEDB; CREATE ROLE auditor LOGIN PASSWORD 'au pw'; \
         GRANT reporting TO auditor WITH ADMIN OPTION",
    );
    for i in 0..small {
        let db = format!("small_{i:02}");
        psql(bin, &admin, &format!("CREATE DATABASE {db} OWNER app"));
        let mut sql = String::new();
        for t in 0..3 {
            sql.push_str(&format!(
                "CREATE TABLE t{t} (id int PRIMARY KEY, v text, at timestamptz DEFAULT now()); \
                 INSERT INTO t{t} (id, v) SELECT g, md5(g::text) FROM generate_series(1, 2000) g; \
                 GRANT SELECT ON t{t} TO reporting; "
            ));
        }
        psql(bin, &src.conninfo(&db), &sql);
    }
    for i in 0..big {
        let db = format!("big_{i}");
        psql(bin, &admin, &format!("CREATE DATABASE {db}"));
        let out = Command::new(bin.join("pgbench"))
            .args([
                "-i",
                "-q",
                "-s",
                &scale.to_string(),
                "-d",
                &src.conninfo(&db),
            ])
            .output()
            .expect("running pgbench");
        assert!(
            out.status.success(),
            "pgbench -i: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn timed(mut cmd: Command, log: &Path) -> Duration {
    let f = std::fs::File::create(log).unwrap();
    cmd.stdout(Stdio::from(f.try_clone().unwrap()))
        .stderr(Stdio::from(f));
    let t0 = Instant::now();
    let status = cmd.status().expect("starting the tool");
    let d = t0.elapsed();
    assert!(
        status.success(),
        "failed, see {}: {}",
        log.display(),
        std::fs::read_to_string(log).unwrap_or_default()
    );
    d
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let small = env_num("BENCH_SMALL", 20);
    let big = env_num("BENCH_BIG", 2);
    let scale = env_num("BENCH_PGBENCH_SCALE", 10);
    let runs = env_num("BENCH_RUNS", 2).max(1);
    let jobs = env_num("BENCH_JOBS", 2);
    let bin = testkit::find_bin_dir().expect("PostgreSQL binaries");
    let tool = PathBuf::from(env!("CARGO_BIN_EXE_pg_dbmigrator"));
    let work = tempfile::tempdir().unwrap();
    // The tools' logs stay, for a look at where the time went.
    let logs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-logs");
    std::fs::create_dir_all(&logs).unwrap();
    eprintln!("starting source and target servers ...");
    let src = Cluster::start(&ClusterOptions::default()).expect("source server");
    let tgt = Cluster::start(&ClusterOptions::default()).expect("target server");
    eprintln!("building the source cluster: {small} small databases, {big} pgbench databases at scale {scale} ...");
    build_source(&bin, &src, small, big, scale);
    // pg_dumpall carries the bootstrap superuser's password too: give both
    // servers the same one, so psql can still connect to the target after
    // replaying it.
    psql(
        &bin,
        &src.conninfo("postgres"),
        &format!("ALTER ROLE {} PASSWORD '{}'", src.superuser, tgt.password),
    );
    let src_ci = |db: &str| src.conninfo(db).replace(&src.password, &tgt.password);
    let size = names(
        &bin,
        &src_ci("postgres"),
        "SELECT pg_size_pretty(sum(pg_database_size(oid))) FROM pg_database WHERE datname LIKE 'small_%' OR datname LIKE 'big_%'",
    );
    let (mut ours, mut dumpall) = (Vec::new(), Vec::new());
    for round in 0..runs {
        reset_target(&bin, &tgt);
        let dir = work.path().join(format!("run{round}"));
        let mut cmd = Command::new(&tool);
        // As the single-database bench: no verify (pg_dumpall has none),
        // ANALYZE kept (pg_dumpall | psql leaves the statistics empty).
        cmd.args(["migrate", "--all-databases", "--verify", "none"])
            .args(["--jobs", &jobs.to_string()])
            .args(["--source", &src_ci("postgres")])
            .args(["--target", &tgt.conninfo("postgres")])
            .arg("--dump-path")
            .arg(&dir);
        let d = timed(cmd, &logs.join(format!("cluster-ours{round}.log")));
        eprintln!(
            "round {round}: pg_dbmigrator --all-databases {:.2}s",
            d.as_secs_f64()
        );
        ours.push(d.as_secs_f64());

        reset_target(&bin, &tgt);
        let mut cmd = Command::new("/bin/bash");
        // (Both servers have the same superuser password by now.)
        cmd.env("PGPASSWORD", &tgt.password).arg("-c").arg(format!(
            "set -o pipefail; '{}' -h {} -p {} -U {} | '{}' -X -q -h {} -p {} -U {} -d postgres >/dev/null",
            bin.join("pg_dumpall").display(),
            src.host,
            src.port,
            src.superuser,
            bin.join("psql").display(),
            tgt.host,
            tgt.port,
            tgt.superuser
        ));
        let d = timed(cmd, &logs.join(format!("cluster-dumpall{round}.log")));
        eprintln!("round {round}: pg_dumpall | psql {:.2}s", d.as_secs_f64());
        dumpall.push(d.as_secs_f64());
    }
    let (a, b) = (median(ours), median(dumpall));
    let machine = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    println!(
        "\n### A whole cluster: {small} small + {big} pgbench (scale {scale}) databases, {} of data, 5 roles\n",
        size.first().cloned().unwrap_or_default()
    );
    println!(
        "PostgreSQL {} -> {}, testkit settings, {} CPUs ({machine}), median of {runs} run(s), pg_dbmigrator --jobs {jobs}\n",
        src.major,
        tgt.major,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("| tool | seconds | vs pg_dumpall \\| psql |");
    println!("|---|--:|--:|");
    println!(
        "| pg_dbmigrator migrate --all-databases | {a:.2} | {:.2}x |",
        b / a
    );
    println!("| pg_dumpall \\| psql | {b:.2} | 1.00x |");
}
