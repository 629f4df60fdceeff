//! `examples/embed.rs`, the library as a service embeds it, run as built
//! by `cargo test` against throwaway servers: its four tasks (offline with
//! progress, online with a cutover from code, errors classified, cancel
//! then resume) must each do what they say, and the targets hold the rows.

mod common;

use std::path::PathBuf;

use pg_dbmigrator::testkit;

/// Rows of `big`: about 50 MB of heap, so the copy takes long enough for
/// task 4's cancel to land in the middle of it.
const BIG_ROWS: i64 = 200_000;

/// The example's binary, built beside this test: `target/<profile>/examples/embed`.
/// A plain `cargo test` builds examples; `cargo test --test embed_example`
/// does not, so a missing or stale one is refused rather than run.
fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let bin = profile_dir.join("examples").join("embed");
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/embed.rs");
    assert!(
        modified(&bin).is_some_and(|b| Some(b) >= modified(&source)),
        "{} is missing or older than examples/embed.rs: run `cargo build --examples` \
         (a plain `cargo test` builds them; `cargo test --test embed_example` does not)",
        bin.display()
    );
    bin
}

async fn count(conninfo: &str, table: &str) -> i64 {
    testkit::query_scalar(conninfo, &format!("SELECT count(*) FROM {table}"))
        .await
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedding_example_does_its_four_tasks() {
    let db = testkit::shared_pair().fresh_db("embed").await;
    testkit::execute(
        &db.source,
        &format!(
            "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL);
             INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 1000) g;
             CREATE TABLE big (id int PRIMARY KEY, pad text NOT NULL);
             INSERT INTO big SELECT g, repeat(md5(g::text), 7) FROM generate_series(1, {BIG_ROWS}) g;
             ANALYZE"
        ),
    )
    .await
    .unwrap();
    // Task 4's target: a database the full migration creates.
    let resume_target = common::other_target_db(&db, "r");
    let admin = testkit::shared_pair().target.admin_conninfo();
    testkit::execute(&admin, &format!("DROP DATABASE IF EXISTS {}_r", db.name))
        .await
        .unwrap();

    let online = testkit::shared_logical_pair()
        .fresh_db("embed_online")
        .await;
    testkit::execute(
        &online.source,
        "CREATE TABLE orders (id int PRIMARY KEY, total numeric NOT NULL);
         INSERT INTO orders SELECT g, g * 1.5 FROM generate_series(1, 500) g",
    )
    .await
    .unwrap();

    let work = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(example_binary());
    cmd.env_clear()
        .env("HOME", work.path())
        .env("TMPDIR", work.path())
        .env("EMBED_SOURCE", &db.source)
        .env("EMBED_TARGET", &db.target)
        .env("EMBED_RESUME_TARGET", &resume_target)
        .env("EMBED_ONLINE_SOURCE", &online.source)
        .env("EMBED_ONLINE_TARGET", &online.target);
    cmd.kill_on_drop(true);
    let out = tokio::time::timeout(std::time::Duration::from_secs(300), cmd.output())
        .await
        .expect("the example did not finish in 5 minutes")
        .unwrap();
    let (stdout, stderr) = (common::text(&out.stdout), common::text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    println!("{stdout}"); // (shown with --nocapture)

    for expected in [
        "task 1: copy ",
        "task 1: offline: ",
        "verify clean: true",
        "task 1: removed ",
        "task 2: online: caught up",
        "task 2: online: cut over, writes blocked for ",
        "task 3: unreachable port: kind=Connection retryable=true",
        "task 3: wrong password: kind=Authentication retryable=false",
        "task 3: jobs(0): kind=Configuration retryable=false",
        "task 4: cancelling at ",
        "task 4: cancelled; token saved",
        "task 4: resumed=true and finished",
        "all tasks done",
    ] {
        assert!(
            stdout.contains(expected),
            "no {expected:?} in:\n{stdout}\nstderr:\n{stderr}"
        );
    }
    // Live progress: the copy's percent was printed more than once.
    assert!(stdout.matches("task 1: copy ").count() >= 2, "{stdout}");
    assert!(!stdout.contains("password=") && !stderr.contains("password="));

    assert_eq!(count(&db.target, "big").await, BIG_ROWS);
    assert_eq!(count(&db.target, "items").await, 1000);
    assert_eq!(count(&resume_target, "big").await, BIG_ROWS);
    assert_eq!(count(&online.target, "orders").await, 500);
}
