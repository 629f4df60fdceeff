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
