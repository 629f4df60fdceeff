//! A self-contained demo: two throwaway local PostgreSQL servers, a sample
//! shop database loaded into the first, migrated to the second with
//! pg_dbmigrator, verified, and the summary printed. Installs the
//! PostgreSQL server package (Debian) when it is missing. Nothing is left
//! behind: both servers are stopped and removed at the end.
//!
//!     cargo run --release --example demo

use pg_dbmigrator::testkit::{self, Cluster, ClusterOptions};
use pg_dbmigrator::{EndpointConfig, MigrationConfig, Migrator};
use tokio_util::sync::CancellationToken;

fn fixture(name: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bin = testkit::ensure_server_installed()?;
    println!("PostgreSQL server binaries: {}", bin.display());
    println!("starting two throwaway servers ...");
    let source = Cluster::start(&ClusterOptions {
        bin_dir: Some(bin.clone()),
        logical: true,
        ..Default::default()
    })?;
    let target = Cluster::start(&ClusterOptions {
        bin_dir: Some(bin),
        ..Default::default()
    })?;
    println!(
        "  source: 127.0.0.1:{} (PostgreSQL {})",
        source.port, source.major
    );
    println!(
        "  target: 127.0.0.1:{} (PostgreSQL {})",
        target.port, target.major
    );

    for c in [&source, &target] {
        testkit::execute(&c.conninfo("postgres"), "CREATE DATABASE shop").await?;
    }
    let schema = fixture("demo_schema.sql");
    testkit::execute(&source.conninfo("shop"), &schema).await?;
    testkit::execute(&target.conninfo("shop"), &schema).await?;
    testkit::execute(&source.conninfo("shop"), &fixture("demo_data.sql")).await?;
    println!("loaded fixtures/demo_*.sql into the source; schema only on the target\n");

    let work = tempfile::tempdir()?;
    let config = MigrationConfig {
        source: Some(EndpointConfig::parse(&source.conninfo("shop"))?),
        target: Some(EndpointConfig::parse(&target.conninfo("shop"))?),
        data_only: true,
        jobs: 4,
        dump_path: Some(work.path().join("demo")),
        ..Default::default()
    };
    println!("migrating: pg_dbmigrator migrate --data-only --jobs 4 --source ... --target ...");
    let report = Migrator::new(config).run(CancellationToken::new()).await?;
    println!("\n{}", report.summary());
    let clean = report.verify.as_ref().is_some_and(|v| v.is_clean());
    source.stop();
    target.stop();
    if clean {
        println!("demo finished: the target holds exactly the source's data");
        Ok(())
    } else {
        Err("verify found differences".into())
    }
}
