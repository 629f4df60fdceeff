//! A self-contained demo: two throwaway local PostgreSQL servers, a sample
//! shop database loaded into the first, migrated (schema and data) to the
//! second with pg_dbmigrator, verified, and the summary printed. Installs the
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

    testkit::execute(&source.conninfo("postgres"), "CREATE DATABASE shop").await?;
    testkit::execute(&source.conninfo("shop"), &fixture("demo_schema.sql")).await?;
    testkit::execute(&source.conninfo("shop"), &fixture("demo_data.sql")).await?;
    println!("loaded fixtures/demo_*.sql into the source; the target has no database 'shop' yet\n");

    let work = tempfile::tempdir()?;
    let config = MigrationConfig {
        source: Some(EndpointConfig::parse(&source.conninfo("shop"))?),
        target: Some(EndpointConfig::parse(&target.conninfo("shop"))?),
        jobs: 4,
        dump_path: Some(work.path().join("demo")),
        ..Default::default()
    };
    println!("migrating: pg_dbmigrator migrate --jobs 4 --source ... --target ...");
    let report = Migrator::new(config).run(CancellationToken::new()).await?;
    println!("\n{}", report.summary());
    let clean = report.verify.as_ref().is_some_and(|v| v.is_clean());
    source.stop();
    target.stop();
    if clean {
        println!("demo finished: the target holds the source's schema and exactly its data");
        Ok(())
    } else {
        Err("verify found differences".into())
    }
}
