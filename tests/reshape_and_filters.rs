//! Issue 21, items 12 and 13. Filters: a sequence a selected table's
//! default calls without owning it comes along with the table (created,
//! its value set), and a refusal names its cause and the flag that fixes
//! it first. Re-shaping: a data-only run loads a plain source table into a
//! table partitioned on the target, and a partitioned source table into a
//! plain one, each row once, with a clean verify.

mod common;

use common::*;
use pg_dbmigrator::testkit;

/// pagila's shape (a free-standing sequence the table's default calls, no
/// OWNED BY), a sequence in another schema shared by two tables, and a
/// sequence owned by another table than the one whose default calls it.
const FREE_SEQUENCES: &str = "
CREATE SEQUENCE public.actor_actor_id_seq;
CREATE TABLE public.actor (
    actor_id integer DEFAULT nextval('public.actor_actor_id_seq'::regclass) NOT NULL PRIMARY KEY,
    first_name text NOT NULL);
CREATE INDEX idx_actor_first_name ON public.actor (first_name);
CREATE VIEW public.actor_names AS SELECT first_name FROM public.actor;
INSERT INTO public.actor (first_name) SELECT 'actor ' || g FROM generate_series(1, 25) g;

CREATE SCHEMA ids;
CREATE SEQUENCE ids.shared_seq START 100;
CREATE TABLE public.film (id bigint DEFAULT nextval('ids.shared_seq') PRIMARY KEY, title text);
CREATE TABLE public.store (id bigint DEFAULT nextval('ids.shared_seq') PRIMARY KEY, city text);
INSERT INTO public.film (title) SELECT 'film ' || g FROM generate_series(1, 10) g;
INSERT INTO public.store (city) SELECT 'city ' || g FROM generate_series(1, 5) g;

CREATE TABLE public.owner_t (id serial PRIMARY KEY);
CREATE TABLE public.borrower (id integer DEFAULT nextval('public.owner_t_id_seq') PRIMARY KEY, x text);
INSERT INTO public.owner_t DEFAULT VALUES; INSERT INTO public.owner_t DEFAULT VALUES;
INSERT INTO public.borrower (x) SELECT 'b' || g FROM generate_series(1, 4) g;

CREATE SCHEMA reports;
CREATE VIEW reports.actor_count AS SELECT count(*) AS n FROM public.actor;
";

/// User relations of a database, `schema.name` in order.
async fn relations_of(ci: &str) -> String {
    testkit::query_scalar(
        ci,
        "SELECT coalesce(string_agg(format('%s.%s', n.nspname, c.relname), ' ' ORDER BY n.nspname, c.relname), '')
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname IN ('ids', 'public') AND c.relkind IN ('r', 'p', 'v', 'S')",
    )
    .await
}

/// `last_value, is_called` of a sequence.
async fn sequence_state(ci: &str, seq: &str) -> String {
    testkit::query_scalar(
        ci,
        &format!("SELECT last_value || ' ' || is_called FROM {seq}"),
    )
    .await
}

/// The error line of a refused run (the binary prints one).
fn error_line(stderr: &str) -> String {
    stderr
        .lines()
        .find(|l| l.starts_with("pg_dbmigrator: error: "))
        .unwrap_or_else(|| panic!("no error line in: {stderr}"))
        .trim_start_matches("pg_dbmigrator: error: configuration error: ")
        .to_string()
}

/// `-t` of a table whose default calls a sequence it does not own brings
/// the sequence along: created on the target, its value set, the rows
/// there, and the report saying so. Three shapes of such a sequence.
#[tokio::test]
async fn a_sequence_a_selected_default_calls_comes_along() {
    let db = testkit::shared_pair().fresh_db("freeseq").await;
    testkit::execute(&db.source, FREE_SEQUENCES).await.unwrap();

    // pagila's actor: the sequence is public's, owned by nobody.
    let actor = other_target_db(&db, "actor");
    let report = migrate_clean(&db.source, &actor, &["-t", "public.actor"]).await;
    assert_eq!(
        relations_of(&actor).await,
        "public.actor public.actor_actor_id_seq"
    );
    let notes = report["schema_notes"].to_string();
    assert!(
        notes.contains("brought along SEQUENCE public.actor_actor_id_seq")
            && notes.contains("TABLE public.actor needs it"),
        "{notes}"
    );
    assert_eq!(
        sequence_state(&actor, "public.actor_actor_id_seq").await,
        "25 true"
    );
    // A new row takes the next number, as it would on the source.
    assert_eq!(
        testkit::query_scalar(
            &actor,
            "INSERT INTO public.actor (first_name) VALUES ('new') RETURNING actor_id || ' ' || (SELECT count(*) FROM public.actor)",
        )
        .await,
        "26 25"
    );
    assert_eq!(report["verify"]["sequences"], 1, "{report:#}");

    // A sequence of another schema, shared with a table left out: the
    // schema and the sequence come, the other table does not.
    let film = other_target_db(&db, "film");
    let report = migrate_clean(&db.source, &film, &["-t", "public.film"]).await;
    assert_eq!(relations_of(&film).await, "ids.shared_seq public.film");
    let notes = report["schema_notes"].to_string();
    assert!(
        notes.contains("brought along SEQUENCE ids.shared_seq"),
        "{notes}"
    );
    assert_eq!(
        sequence_state(&film, "ids.shared_seq").await,
        sequence_state(&db.source, "ids.shared_seq").await
    );
    assert_eq!(sequence_state(&film, "ids.shared_seq").await, "114 true");
    assert_eq!(
        testkit::query_scalar(
            &film,
            "SELECT count(*) || ' ' || min(id) || ' ' || max(id) FROM public.film"
        )
        .await,
        "10 100 109"
    );

    // A sequence owned by another table: it comes without its OWNED BY,
    // the owning table stays behind.
    let borrower = other_target_db(&db, "borrower");
    let report = migrate_clean(&db.source, &borrower, &["-t", "public.borrower"]).await;
    assert_eq!(
        relations_of(&borrower).await,
        "public.borrower public.owner_t_id_seq"
    );
    assert!(
        report["schema_notes"]
            .to_string()
            .contains("brought along SEQUENCE public.owner_t_id_seq"),
        "{report:#}"
    );
    assert_eq!(
        sequence_state(&borrower, "public.owner_t_id_seq").await,
        sequence_state(&db.source, "public.owner_t_id_seq").await
    );
    assert_eq!(
        testkit::query_scalar(
            &borrower,
            "SELECT string_agg(x, ',' ORDER BY id) FROM public.borrower"
        )
        .await,
        "b1,b2,b3,b4"
    );
    // Nobody owns it on the target: dropping the borrower keeps it.
    assert_eq!(
        testkit::query_scalar(
            &borrower,
            "SELECT count(*) FROM pg_depend WHERE objid = 'public.owner_t_id_seq'::regclass AND deptype = 'a'",
        )
        .await,
        "0"
    );
}

/// What still is refused names its cause first (the object the selection
/// leaves out, not the selected table's own primary key) and the flag that
/// fixes it, before anything is created.
#[tokio::test]
async fn a_refusal_names_its_cause_and_flag_first() {
    let db = testkit::shared_pair().fresh_db("freeseqbad").await;
    testkit::execute(&db.source, FREE_SEQUENCES).await.unwrap();
    let target = other_target_db(&db, "new");
    for (args, first) in [
        (
            vec!["-t", "public.actor", "-T", "public.actor_actor_id_seq"],
            "SEQUENCE public.actor_actor_id_seq is left out by --exclude-table, and TABLE public.actor needs it: \
             drop that --exclude-table or leave TABLE public.actor out with --exclude-table public.actor",
        ),
        (
            vec!["-t", "public.film", "-N", "ids"],
            "SEQUENCE ids.shared_seq is in schema ids, which --exclude-schema leaves out, and TABLE public.film needs it: \
             drop that --exclude-schema or leave TABLE public.film out with --exclude-table public.film",
        ),
        (
            vec!["-n", "reports"],
            "TABLE public.actor is outside the selection, and VIEW reports.actor_count needs it: \
             add its schema with --schema public or leave VIEW reports.actor_count out with --exclude-table reports.actor_count",
        ),
        (
            vec!["-t", "public.actor_names"],
            "TABLE public.actor is outside the selection, and VIEW public.actor_names needs it: \
             add it with --table public.actor or leave VIEW public.actor_names out with --exclude-table public.actor_names",
        ),
    ] {
        let err = migrate_refused(&db.source, &target, &args).await;
        let line = error_line(&err);
        assert_eq!(line, first, "{args:?}: {err}");
        assert!(!line.contains("CONSTRAINT"), "{line}");
        assert!(!target_database_exists(&format!("{}_new", db.name)).await);
    }
}

/// A digest of a relation's rows (with its partitions), ordered by `key`,
/// independent of the tool's verify.
async fn rows_digest(ci: &str, rel: &str, key: &str) -> String {
    testkit::query_scalar(
        ci,
        &format!("SELECT count(*) || ' ' || md5(coalesce(string_agg(t::text, '|' ORDER BY {key}), '')) FROM {rel} t"),
    )
    .await
}

/// The report's entry for a copied source table.
fn copied<'a>(report: &'a serde_json::Value, table: &str) -> &'a serde_json::Value {
    report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == table)
        .unwrap_or_else(|| panic!("{table} not in {report:#}"))
}

/// Plain source tables into tables the user partitioned on the target: a
/// data-only run COPYs into the partitioned parent, which routes each row
/// (range with a default partition; list with a hash-partitioned
/// sub-tree), in binary, never with FREEZE; verify compares each source
/// table with the whole partition tree.
#[tokio::test]
async fn plain_source_tables_load_into_partitioned_targets() {
    let db = testkit::shared_pair().fresh_db("toparted").await;
    testkit::execute(
        &db.source,
        "CREATE TABLE public.events (id int PRIMARY KEY, at date NOT NULL, what text);
         CREATE TABLE public.orders (id int NOT NULL, region text NOT NULL, amount numeric(10,2));
         -- Over 1 MB: a plain load of it would empty it and COPY FREEZE.
         INSERT INTO public.events SELECT g, date '2023-06-01' + (g % 1200), repeat('e', 60) || g
           FROM generate_series(1, 30000) g;
         INSERT INTO public.orders SELECT g, (ARRAY['eu', 'us', 'apac'])[1 + g % 3], g * 1.25
           FROM generate_series(1, 900) g;",
    )
    .await
    .unwrap();
    testkit::execute(
        &db.target,
        "CREATE TABLE public.events (id int, at date NOT NULL, what text, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
         CREATE TABLE public.events_2024 PARTITION OF public.events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
         CREATE TABLE public.events_2025 PARTITION OF public.events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
         CREATE TABLE public.events_other PARTITION OF public.events DEFAULT;
         CREATE TABLE public.orders (id int NOT NULL, region text NOT NULL, amount numeric(10,2)) PARTITION BY LIST (region);
         CREATE TABLE public.orders_eu PARTITION OF public.orders FOR VALUES IN ('eu');
         CREATE TABLE public.orders_rest PARTITION OF public.orders FOR VALUES IN ('us', 'apac') PARTITION BY HASH (id);
         CREATE TABLE public.orders_rest_0 PARTITION OF public.orders_rest FOR VALUES WITH (MODULUS 2, REMAINDER 0);
         CREATE TABLE public.orders_rest_1 PARTITION OF public.orders_rest FOR VALUES WITH (MODULUS 2, REMAINDER 1);",
    )
    .await
    .unwrap();

    let report = migrate_clean(&db.source, &db.target, &["--data-only"]).await;
    for (table, rows) in [("public.events", 30000), ("public.orders", 900)] {
        let t = copied(&report, table);
        assert_eq!(t["loaded_into"], table, "{t}");
        assert_eq!(t["rows"], rows, "{t}");
        assert_eq!(t["format"], "binary", "{t}");
        assert_eq!(t["freeze"], false, "{t}");
    }
    for (rel, key) in [("public.events", "id"), ("public.orders", "id")] {
        assert_eq!(
            rows_digest(&db.target, rel, key).await,
            rows_digest(&db.source, rel, key).await,
            "{rel}"
        );
    }
    // The rows went where the bounds say.
    assert_eq!(
        testkit::query_scalar(
            &db.target,
            "SELECT (SELECT count(*) FROM ONLY public.events_2025) || ' ' ||
                    (SELECT count(*) FROM public.events_other WHERE at >= '2025-01-01' AND at < '2026-01-01') || ' ' ||
                    (SELECT count(*) FROM public.orders_eu) || ' ' ||
                    (SELECT count(*) FROM public.orders_rest_0) + (SELECT count(*) FROM public.orders_rest_1)",
        )
        .await,
        testkit::query_scalar(
            &db.source,
            "SELECT (SELECT count(*) FROM public.events WHERE at >= '2025-01-01' AND at < '2026-01-01') || ' 0 ' ||
                    (SELECT count(*) FROM public.orders WHERE region = 'eu') || ' ' ||
                    (SELECT count(*) FROM public.orders WHERE region <> 'eu')",
        )
        .await
    );
    let verify = &report["verify"];
    assert_eq!(verify["tables"].as_array().unwrap().len(), 2, "{verify:#}");

    // Again: the rows already there are refused, naming the partitioned
    // table; --force-clean empties its partitions, and the rows are there once.
    let err = text(
        &run_migrate(&db.source, &db.target, &["--data-only"])
            .await
            .stderr,
    );
    assert!(
        err.contains("target table(s) already contain rows: public.events, public.orders"),
        "{err}"
    );
    let out = run_migrate(&db.source, &db.target, &["--data-only", "--force-clean"]).await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    // The summary says where the rows went, and in which format.
    assert!(
        stdout.contains("re-shaped: public.events loaded into public.events on the target (Binary COPY, no FREEZE)")
            && stdout.contains("0 differences"),
        "{stdout}"
    );
    assert_eq!(
        rows_digest(&db.target, "public.events", "id").await,
        rows_digest(&db.source, "public.events", "id").await
    );
}

/// A partitioned source table into a plain target table of the same name
/// (a multi-level range tree with a default partition; a list tree whose
/// partitions list their columns in another order), and a list-partitioned
/// one into a hash-partitioned target: each partition's rows load once
/// into the target relation, the source's partitions are neither refused
/// nor missed, and verify compares the whole tree with the target.
#[tokio::test]
async fn partitioned_source_tables_load_into_other_shapes() {
    let db = testkit::shared_pair().fresh_db("fromparted").await;
    testkit::execute(
        &db.source,
        "CREATE TABLE public.measurements (id int NOT NULL, at date NOT NULL, v double precision) PARTITION BY RANGE (at);
         CREATE TABLE public.m_2024 PARTITION OF public.measurements FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')
                PARTITION BY HASH (id);
         CREATE TABLE public.m_2024_a PARTITION OF public.m_2024 FOR VALUES WITH (MODULUS 2, REMAINDER 0);
         CREATE TABLE public.m_2024_b PARTITION OF public.m_2024 FOR VALUES WITH (MODULUS 2, REMAINDER 1);
         CREATE TABLE public.m_2025 PARTITION OF public.measurements FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
         CREATE TABLE public.m_other PARTITION OF public.measurements DEFAULT;
         INSERT INTO public.measurements SELECT g, date '2023-10-01' + (g % 900), g / 7.0 FROM generate_series(1, 5000) g;

         CREATE TABLE public.tickets (id int NOT NULL, kind text NOT NULL, note text) PARTITION BY LIST (kind);
         CREATE TABLE public.tickets_bug (note text, kind text NOT NULL, id int NOT NULL);
         ALTER TABLE public.tickets ATTACH PARTITION public.tickets_bug FOR VALUES IN ('bug');
         CREATE TABLE public.tickets_other PARTITION OF public.tickets DEFAULT;
         INSERT INTO public.tickets SELECT g, (ARRAY['bug', 'idea', 'question'])[1 + g % 3], 'n' || g FROM generate_series(1, 600) g;

         CREATE TABLE public.logs (id int NOT NULL, level text NOT NULL, line text) PARTITION BY LIST (level);
         CREATE TABLE public.logs_error PARTITION OF public.logs FOR VALUES IN ('error');
         CREATE TABLE public.logs_info PARTITION OF public.logs FOR VALUES IN ('info');
         INSERT INTO public.logs SELECT g, CASE WHEN g % 5 = 0 THEN 'error' ELSE 'info' END, 'l' || g FROM generate_series(1, 700) g;",
    )
    .await
    .unwrap();
    testkit::execute(
        &db.target,
        "CREATE TABLE public.measurements (id int NOT NULL, at date NOT NULL, v double precision);
         CREATE TABLE public.tickets (id int NOT NULL, kind text NOT NULL, note text);
         CREATE TABLE public.logs (id int NOT NULL, level text NOT NULL, line text) PARTITION BY HASH (id);
         CREATE TABLE public.logs_0 PARTITION OF public.logs FOR VALUES WITH (MODULUS 3, REMAINDER 0);
         CREATE TABLE public.logs_1 PARTITION OF public.logs FOR VALUES WITH (MODULUS 3, REMAINDER 1);
         CREATE TABLE public.logs_2 PARTITION OF public.logs FOR VALUES WITH (MODULUS 3, REMAINDER 2);",
    )
    .await
    .unwrap();

    let report = migrate_clean(&db.source, &db.target, &["--data-only"]).await;
    // Each source partition holding rows loaded into the target relation.
    for (leaf, into) in [
        ("public.m_2024_a", "public.measurements"),
        ("public.m_2024_b", "public.measurements"),
        ("public.m_2025", "public.measurements"),
        ("public.m_other", "public.measurements"),
        ("public.tickets_bug", "public.tickets"),
        ("public.tickets_other", "public.tickets"),
        ("public.logs_error", "public.logs"),
        ("public.logs_info", "public.logs"),
    ] {
        assert_eq!(copied(&report, leaf)["loaded_into"], into, "{report:#}");
    }
    assert_eq!(report["rows"], 5000 + 600 + 700, "{report:#}");
    for (rel, key) in [
        ("public.measurements", "id"),
        ("public.tickets", "id"),
        ("public.logs", "id"),
    ] {
        assert_eq!(
            rows_digest(&db.target, rel, key).await,
            rows_digest(&db.source, rel, key).await,
            "{rel}"
        );
    }
    // Verify compared each tree with its target relation, as one table.
    let checks: Vec<(String, i64)> = report["verify"]["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["table"].as_str().unwrap().to_string(),
                t["target_rows"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        checks,
        [
            ("public.logs".to_string(), 700),
            ("public.measurements".to_string(), 5000),
            ("public.tickets".to_string(), 600),
        ]
    );

    // A row missing on the target is found, on the tree it belongs to.
    testkit::execute(&db.target, "DELETE FROM public.tickets WHERE id = 7")
        .await
        .unwrap();
    let out = run_async(&[
        "-q", "verify", "--source", &db.source, "--target", &db.target, "--json",
    ])
    .await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let diffs = report["differences"].as_array().unwrap();
    assert_eq!(diffs.len(), 1, "{report:#}");
    assert_eq!(diffs[0]["object"], "public.tickets", "{report:#}");
    assert_eq!(diffs[0]["kind"], "row_count", "{report:#}");
}
