//! Schema changes made on the source while it streams.
//!
//! With capture on (a superuser source role, the whole database, a source
//! of PostgreSQL 14 or newer), an event trigger on `ddl_command_end` writes
//! each DDL command's text, with the role and `search_path` it ran under,
//! as a transactional logical message: the change arrives in the stream
//! exactly where it happened, and the applier replays it there. The same
//! trigger adds a table created during the run to the publication inside
//! the creating transaction, so no row written after `CREATE TABLE` is
//! lost. A command run inside a function, a procedure or a `DO` block is
//! not the query string's: the capture marks it `nested` and describes
//! what it left in the catalogs instead, which the applier reproduces
//! ([`effect`]). Where capture is not possible, a fingerprint of the
//! migrated objects is taken at the snapshot and again under the fence;
//! any difference refuses the cutover (never a silent drift).
//!
//! This module holds the SQL of both, the text rules for what can be
//! replayed, and nothing that drives a stage: [`super::source`] installs
//! and removes, [`super::apply`] replays, the online orchestrator checks.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::error::{MigrationError, Result};
use crate::pg::quote;

pub mod effect;

/// Prefix of the logical messages that carry captured DDL.
pub const DDL_MESSAGE_PREFIX: &str = "pg_dbmigrator.ddl";

/// The schema on the source that holds the capture functions (excluded
/// from every schema read, like the target's bookkeeping schema).
pub const CAPTURE_SCHEMA: &str = "_pg_dbmigrator";

/// Our own sessions set this to `off`: what the tool itself runs on the
/// source is never captured.
pub const NO_CAPTURE_SETTING: &str = "SET pg_dbmigrator.capture = off";

/// The event trigger's name for a migration (our objects carry the
/// `pg_dbmigrator_` prefix; the schema reader leaves such event triggers out).
pub fn trigger_name(object_name: &str) -> String {
    format!("{object_name}_ddl")
}

/// One captured command, as the event trigger writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DdlMessage {
    /// The client's whole query string (`current_query()`).
    pub sql: String,
    /// The role the command ran as (the session user when it could not be
    /// vouched for).
    pub role: String,
    pub search_path: String,
    /// Command tags of the commands this firing reports.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Tables this command added to the publication.
    #[serde(default)]
    pub published: Vec<String>,
    /// Tables created (or changed) without a usable replica identity: not
    /// published, so their changes do not stream.
    #[serde(default)]
    pub unpublished: Vec<String>,
    /// Published now, but rows were already in them: those rows never
    /// streamed.
    #[serde(default)]
    pub published_with_rows: Vec<String>,
    /// What a DROP removed on the source (CASCADE included).
    #[serde(default)]
    pub dropped: Vec<DroppedObject>,
    /// The capture itself failed on the source (the statement went on).
    #[serde(default)]
    pub capture_error: Option<String>,
    /// The firing touched only temporary objects (or a DROP found nothing
    /// to drop): it replays nothing (see [`temporary_takes_statement`]).
    #[serde(default)]
    pub temporary: bool,
    /// The command ran inside a function, a procedure or a `DO` block
    /// (the query string is not it): it replays by its [`Self::effects`]
    /// and by [`Self::dropped`], never by the text.
    #[serde(default)]
    pub nested: bool,
    /// The objects a nested command touched, as they stood right after it.
    #[serde(default)]
    pub effects: Vec<effect::Effect>,
    /// A nested command's call stack (`PG_CONTEXT`): where it came from a
    /// PL/pgSQL statement, that statement's own text (see
    /// [`nested_statement`]).
    #[serde(default)]
    pub context: Option<String>,
}

/// The text of the statement a nested command ran as, from its call stack
/// (`PG_CONTEXT` as the capture read it): the `SQL statement "..."` frame
/// right below the event trigger's own, when the next frame is a
/// function's (a PL/pgSQL statement or `EXECUTE`). `None` when the
/// command came otherwise (an SQL-language function's body says only
/// `SQL function "f" statement 1`).
pub fn nested_statement(context: &str) -> Option<String> {
    let at = context.find("on_ddl() line")?;
    let rest = &context[at..];
    let rest = &rest[rest.find('\n')? + 1..];
    let body = rest.strip_prefix("SQL statement \"")?;
    let end = body
        .match_indices("\"\n")
        .map(|(i, _)| i)
        .find(|&i| {
            let next = &body[i + 2..];
            next.starts_with("PL/") || next.starts_with("SQL function ")
        })
        .or_else(|| body.strip_suffix('"').map(str::len))?;
    let stmt = body[..end].trim();
    (!stmt.is_empty()).then(|| stmt.to_string())
}

/// One object a DROP removed, as `pg_event_trigger_dropped_objects()` names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DroppedObject {
    pub kind: String,
    pub identity: String,
}

impl DroppedObject {
    /// An expression true while the object still exists (on the target).
    pub fn exists_sql(&self) -> Option<String> {
        let lit = quote::literal(&self.identity);
        let f = match self.kind.as_str() {
            "table" | "view" | "materialized view" | "sequence" | "index" | "foreign table" => {
                "to_regclass"
            }
            "function" | "procedure" => "to_regprocedure",
            "type" => "to_regtype",
            "schema" => "to_regnamespace",
            _ => return None,
        };
        Some(format!("pg_catalog.{f}({lit}) IS NOT NULL"))
    }
}

impl DdlMessage {
    pub fn parse(content: &[u8]) -> Result<DdlMessage> {
        serde_json::from_slice(content).map_err(|e| {
            MigrationError::Internal(format!("a captured schema change is not readable: {e}"))
        })
    }
}

/// The capture objects, created on the source before the slot (so that
/// every change after the slot's snapshot is captured).
///
/// `on_ddl` runs as the user who ran the command (so it sees their role
/// and `search_path`) and calls `capture`, which runs as us: it may emit
/// logical messages and alter our publication, which that user may not.
/// `capture` answers only inside an event trigger (it reads
/// `pg_event_trigger_ddl_commands()`, which fails elsewhere), and takes
/// the claimed role only when the session user is a member of it, so no
/// one can have a statement replayed with more rights than they have.
pub fn install_sql(publication: &str, trigger: &str) -> String {
    let schema = quote::ident(CAPTURE_SCHEMA);
    let pubname = quote::literal(publication);
    let prefix = quote::literal(DDL_MESSAGE_PREFIX);
    format!(
        r#"CREATE SCHEMA IF NOT EXISTS {schema};
GRANT USAGE ON SCHEMA {schema} TO PUBLIC;
CREATE OR REPLACE FUNCTION {schema}.capture(claimed_role text, path text, tag text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $capture$
DECLARE
  r record;
  rel record;
  user_command boolean := false;
  temporary boolean := false;
  temp_tags text[] := '{{}}';
  tags text[] := '{{}}';
  published text[] := '{{}}';
  unpublished text[] := '{{}}';
  with_rows text[] := '{{}}';
  has_rows boolean;
  who text := claimed_role;
  dropped text;
  previous text;
  failure text;
  stack text;
  nested boolean;
  effects jsonb := '[]';
  d jsonb;
  kind "char";
BEGIN
  IF current_setting('pg_dbmigrator.capture', true) = 'off' THEN
    RETURN;
  END IF;
  -- Frames below the event trigger's own: the command ran inside a
  -- function, a procedure or a DO block, not as the client's statement.
  GET DIAGNOSTICS stack = PG_CONTEXT;
  nested := strpos(stack, 'on_ddl() line') > 0
            AND strpos(substr(stack, strpos(stack, 'on_ddl() line')), E'\n') > 0;
  BEGIN
  FOR r IN SELECT * FROM pg_event_trigger_ddl_commands() LOOP
    -- An extension's script is replayed by its CREATE/ALTER EXTENSION.
    CONTINUE WHEN r.in_extension;
    -- A temporary object (REFRESH ... CONCURRENTLY's own, a function's
    -- scratch table) lives in one session: nothing to migrate.
    IF r.schema_name = 'pg_temp' OR r.schema_name LIKE 'pg\_temp\_%'
       OR r.schema_name LIKE 'pg\_toast\_temp\_%' THEN
      temporary := true;
      IF NOT r.command_tag = ANY (temp_tags) THEN
        temp_tags := temp_tags || r.command_tag;
      END IF;
      CONTINUE;
    END IF;
    user_command := true;
    IF NOT r.command_tag = ANY (tags) THEN
      tags := tags || r.command_tag;
    END IF;
    IF nested THEN
      -- What the command left, from the catalogs as they stand now.
      d := NULL;
      IF r.classid = 'pg_catalog.pg_class'::regclass AND r.objsubid = 0 THEN
        SELECT c.relkind INTO kind FROM pg_class c WHERE c.oid = r.objid;
        IF kind IN ('r', 'p') THEN
          EXECUTE {describe_table} INTO d USING r.objid;
        ELSIF kind IN ('i', 'I') THEN
          EXECUTE {describe_index} INTO d USING r.objid;
        ELSIF kind = 'S' THEN
          EXECUTE {describe_sequence} INTO d USING r.objid;
        END IF;
      ELSIF r.classid = 'pg_catalog.pg_proc'::regclass THEN
        EXECUTE {describe_routine} INTO d USING r.objid;
      END IF;
      IF d IS NULL THEN
        d := jsonb_build_object('kind', 'other', 'object_type', r.object_type, 'identity', r.object_identity);
      END IF;
      effects := effects || jsonb_build_array(d || jsonb_build_object('tag', r.command_tag));
    END IF;
    CONTINUE WHEN r.classid <> 'pg_catalog.pg_class'::regclass OR r.objsubid <> 0;
    SELECT c.oid, c.relkind, c.relpersistence, c.relreplident, n.nspname,
           format('%I.%I', n.nspname, c.relname) AS name
      INTO rel
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = r.objid;
    CONTINUE WHEN NOT FOUND OR rel.relkind NOT IN ('r', 'p') OR rel.relpersistence <> 'p'
      OR rel.nspname IN ('pg_catalog', 'information_schema', '_pg_dbmigrator')
      OR rel.nspname LIKE 'pg\_%';
    CONTINUE WHEN EXISTS (SELECT 1 FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
                           WHERE p.pubname = {pubname} AND pr.prrelid = rel.oid);
    IF rel.relkind = 'p' OR rel.relreplident = 'f'
       OR (rel.relreplident = 'd' AND EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = rel.oid AND i.indisprimary AND i.indimmediate))
       OR (rel.relreplident = 'i' AND EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = rel.oid AND i.indisreplident)) THEN
      -- Not captured itself (event triggers fire for it too).
      previous := current_setting('pg_dbmigrator.capture', true);
      PERFORM set_config('pg_dbmigrator.capture', 'off', true);
      EXECUTE format('ALTER PUBLICATION %I ADD TABLE %s', {pubname}, rel.name);
      PERFORM set_config('pg_dbmigrator.capture', coalesce(previous, ''), true);
      published := published || rel.name;
      -- Rows already there never streamed (unless the command itself made
      -- them, as CREATE TABLE AS does: its replay makes them again; not
      -- so the replay of a nested one, which makes the table empty).
      IF nested OR r.command_tag NOT IN ('CREATE TABLE AS', 'SELECT INTO') THEN
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM ONLY %s)', rel.name) INTO has_rows;
        IF has_rows THEN
          with_rows := with_rows || rel.name;
        END IF;
      END IF;
    ELSIF NOT rel.name = ANY (unpublished) THEN
      unpublished := unpublished || rel.name;
    END IF;
  END LOOP;
  EXCEPTION WHEN OTHERS THEN
    -- Never fail the user's statement; the applier stops on this instead
    -- (a change that was not captured must not pass silently).
    failure := SQLERRM;
    user_command := true;
  END;
  -- A DROP lists no commands here; what it dropped came from sql_drop.
  dropped := nullif(current_setting('pg_dbmigrator.dropped', true), '');
  PERFORM set_config('pg_dbmigrator.dropped', '', true);
  IF NOT user_command AND tag LIKE 'DROP %'
     AND (current_setting('pg_dbmigrator.dropped_temporary', true) = 'on'
          OR (coalesce(current_setting('pg_dbmigrator.dropped_temporary', true), '') = ''
              AND tag IN ('DROP TABLE', 'DROP VIEW', 'DROP MATERIALIZED VIEW', 'DROP INDEX', 'DROP SEQUENCE',
                          'DROP TYPE', 'DROP DOMAIN', 'DROP FUNCTION', 'DROP PROCEDURE'))) THEN
    -- Everything it dropped was temporary, or (`IF EXISTS`) it dropped
    -- nothing at all: no sql_drop fired, where one fires for any drop.
    temporary := true;
    temp_tags := ARRAY[tag];
  ELSIF NOT user_command AND tag LIKE 'DROP %'
     AND upper(ltrim(current_query())) NOT LIKE 'ALTER EXTENSION%'
     AND upper(ltrim(current_query())) NOT LIKE 'CREATE EXTENSION%' THEN
    user_command := true;
    tags := ARRAY[tag];
  END IF;
  PERFORM set_config('pg_dbmigrator.dropped_temporary', '', true);
  IF NOT user_command AND temporary THEN
    -- Replays nothing; written only so that the applier can tell a
    -- temporary statement of the query string from one run inside it.
    PERFORM pg_logical_emit_message(true, {prefix}, json_build_object(
      'sql', current_query(), 'role', session_user, 'search_path', path, 'tags', temp_tags,
      'temporary', true, 'nested', nested)::text);
    RETURN;
  END IF;
  IF NOT user_command THEN
    RETURN;
  END IF;
  IF who IS NULL OR NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = who)
     OR NOT pg_has_role(session_user, who, 'MEMBER') THEN
    who := session_user;
  END IF;
  -- Emitted here, outside the block above: a message written inside a
  -- subtransaction is decoded after changes that followed it.
  PERFORM pg_logical_emit_message(true, {prefix}, json_build_object(
    'sql', current_query(), 'role', who, 'search_path', path, 'tags', tags,
    'published', published, 'unpublished', unpublished, 'published_with_rows', with_rows,
    'dropped', coalesce(dropped, '[]')::json, 'capture_error', failure,
    'nested', nested, 'effects', effects, 'context', CASE WHEN nested THEN stack END)::text);
END
$capture$;
REVOKE ALL ON FUNCTION {schema}.capture(text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION {schema}.capture(text, text, text) TO PUBLIC;
CREATE OR REPLACE FUNCTION {schema}.on_ddl() RETURNS event_trigger
LANGUAGE plpgsql AS $on_ddl$
BEGIN
  PERFORM {schema}.capture(current_user::text, pg_catalog.current_setting('search_path'), tg_tag);
END
$on_ddl$;
-- What a DROP took (CASCADE included), for the target to take the same.
CREATE OR REPLACE FUNCTION {schema}.on_drop() RETURNS event_trigger
LANGUAGE plpgsql AS $on_drop$
BEGIN
  PERFORM pg_catalog.set_config('pg_dbmigrator.dropped', (
    SELECT coalesce(pg_catalog.json_agg(pg_catalog.json_build_object('kind', d.object_type, 'identity', d.object_identity)), '[]')::text
      FROM pg_catalog.pg_event_trigger_dropped_objects() d
     WHERE NOT d.is_temporary AND (d.original OR d.normal)
       AND d.object_type IN ('table', 'view', 'materialized view', 'sequence', 'index', 'foreign table',
                             'function', 'procedure', 'type', 'schema')), true);
  -- Only temporary objects (what it named and what CASCADE took).
  PERFORM pg_catalog.set_config('pg_dbmigrator.dropped_temporary', (
    SELECT CASE WHEN pg_catalog.count(*) > 0 AND pg_catalog.bool_and(d.is_temporary) THEN 'on' ELSE 'off' END
      FROM pg_catalog.pg_event_trigger_dropped_objects() d
     WHERE d.original OR d.normal), true);
EXCEPTION WHEN OTHERS THEN
  -- Never fail the user's DROP: without the list, the replay is unchecked.
  PERFORM pg_catalog.set_config('pg_dbmigrator.dropped_temporary', 'off', true);
END
$on_drop$;
DROP EVENT TRIGGER IF EXISTS {trigger};
CREATE EVENT TRIGGER {trigger} ON ddl_command_end EXECUTE FUNCTION {schema}.on_ddl();
DROP EVENT TRIGGER IF EXISTS {drop_trigger};
CREATE EVENT TRIGGER {drop_trigger} ON sql_drop EXECUTE FUNCTION {schema}.on_drop();"#,
        trigger = quote::ident(trigger),
        drop_trigger = quote::ident(&format!("{trigger}_drop")),
        describe_table = quote::literal(effect::DESCRIBE_TABLE_SQL),
        describe_index = quote::literal(effect::DESCRIBE_INDEX_SQL),
        describe_sequence = quote::literal(effect::DESCRIBE_SEQUENCE_SQL),
        describe_routine = quote::literal(effect::DESCRIBE_ROUTINE_SQL),
    )
}

/// Remove the capture objects (idempotent).
pub fn remove_sql(trigger: &str) -> String {
    format!(
        "DROP EVENT TRIGGER IF EXISTS {}; DROP EVENT TRIGGER IF EXISTS {}; DROP SCHEMA IF EXISTS {} CASCADE",
        quote::ident(trigger),
        quote::ident(&format!("{trigger}_drop")),
        quote::ident(CAPTURE_SCHEMA)
    )
}

/// Whether the source allows capture, and if not, why (logged, and the
/// fingerprint guards the run instead).
pub async fn capture_possible(
    src: &Client,
    whole_database: bool,
    data_only: bool,
) -> Result<std::result::Result<(), String>> {
    if !whole_database {
        return Ok(Err("filters select part of the database".into()));
    }
    if data_only {
        return Ok(Err("--data-only: the target's schema is the user's".into()));
    }
    let row = crate::pg::query_one_once(
        src,
        "SELECT pg_catalog.current_setting('server_version_num')::int,
                    (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user)",
    )
    .await
    .map_err(|e| MigrationError::db("checking whether schema changes can be captured", e))?;
    let (version, superuser): (i32, bool) = (row.get(0), row.get(1));
    if version < 140000 {
        return Ok(Err(
            "the source is older than PostgreSQL 14 (pgoutput carries no logical messages)".into(),
        ));
    }
    if !superuser {
        return Ok(Err(
            "the source role is not a superuser (only superusers may create event triggers)".into(),
        ));
    }
    Ok(Ok(()))
}

/// Statement kinds that are schema changes and replay as text.
const DDL_WORDS: &[&str] = &[
    "CREATE", "ALTER", "DROP", "COMMENT", "GRANT", "REVOKE", "SECURITY", "IMPORT", "REINDEX",
    "REFRESH",
];
/// Objects of the whole cluster: commands on them fire no event trigger
/// (and are not the migration's to replay).
const GLOBAL_OBJECTS: &[&str] = &["ROLE", "USER", "GROUP", "DATABASE", "TABLESPACE", "SYSTEM"];

/// The statements of a query string that fire `ddl_command_end`, in order.
fn ddl_statements(sql: &str) -> Vec<String> {
    split_statements(sql)
        .into_iter()
        .filter(|stmt| {
            let w = leading_words(stmt, 3);
            let Some(first) = w.first() else {
                return false;
            };
            if first == "SELECT" {
                // SELECT ... INTO is CREATE TABLE AS.
                return leading_words(stmt, usize::MAX).iter().any(|x| x == "INTO");
            }
            if !DDL_WORDS.contains(&first.as_str()) {
                return false;
            }
            let global = |i: usize| {
                w.get(i)
                    .is_some_and(|x| GLOBAL_OBJECTS.contains(&x.as_str()))
            };
            match first.as_str() {
                "CREATE" | "ALTER" | "DROP" => {
                    !(global(1) || w.get(1).is_some_and(|x| x == "EVENT"))
                }
                "COMMENT" | "SECURITY" => !global(2),
                // Role membership (no ON) is global.
                "GRANT" | "REVOKE" => leading_words(stmt, usize::MAX).iter().any(|x| x == "ON"),
                _ => true,
            }
        })
        .collect()
}

/// The replay of the `index`-th firing (from 0) of the event trigger with
/// this query string in one source transaction, or why it cannot be.
///
/// The string is the client's whole query: it can hold several
/// statements, DDL and not. The trigger fires once per DDL statement, in
/// order, so the k-th firing is the k-th DDL statement; the others (an
/// UPDATE sent in the same string) reach the target through the stream.
/// A firing that does not match its statement (DDL run inside a function
/// or a DO block) would replay other effects twice: such firings come
/// marked `nested` and replay by their effect ([`effect`]); an unmarked
/// one (written by the capture of an earlier version) stops the
/// migration. `CONCURRENTLY` is dropped: the replay runs in a
/// transaction, where a plain build gives the same index.
pub fn replay_plan(msg: &DdlMessage, index: usize) -> std::result::Result<String, String> {
    if let Some(e) = &msg.capture_error {
        return Err(format!(
            "capturing the schema change `{}` failed on the source ({e}), so it cannot be replayed",
            short(&msg.sql)
        ));
    }
    let statements = ddl_statements(&msg.sql);
    let unreplayable = || {
        format!(
            "the query `{}` changed the schema on the source ({}) from inside something that is not a DDL statement \
             (a function, a procedure or a DO block): replaying it as text would run its other effects twice",
            short(&msg.sql),
            msg.tags.join(", ")
        )
    };
    if msg.temporary {
        return Ok(String::new());
    }
    let Some(stmt) = statements.get(index) else {
        return Err(unreplayable());
    };
    if !fits(msg, stmt) {
        return Err(unreplayable());
    }
    // Temporary objects live in one session: nothing to migrate (a
    // capture installed by an earlier version sends these unmarked).
    let words = leading_words(stmt, 4);
    if words.first().is_some_and(|w| w == "CREATE")
        && words.iter().any(|w| w == "TEMP" || w == "TEMPORARY")
    {
        return Ok(String::new());
    }
    Ok(drop_concurrently(stmt))
}

/// Whether a firing that touched only temporary objects is the `index`-th
/// DDL statement of its query string (a `CREATE TEMP TABLE` or a `DROP` of
/// a temp table sent by the client: the next firing is the next
/// statement), rather than one run inside it (by `REFRESH MATERIALIZED
/// VIEW CONCURRENTLY`, a function, a `DO` block), which takes no
/// statement. Either way it replays nothing and never stops the migration.
pub fn temporary_takes_statement(msg: &DdlMessage, index: usize) -> bool {
    ddl_statements(&msg.sql)
        .get(index)
        .is_some_and(|stmt| fits(msg, stmt))
}

/// The statement is the command that fired: same verb, and the object
/// kind among its first words.
fn fits(msg: &DdlMessage, stmt: &str) -> bool {
    let words = leading_words(stmt, 12);
    msg.tags.iter().any(|tag| {
        let mut t = tag.split_whitespace();
        let verb = t.next().unwrap_or_default();
        let kind = t.next();
        words.first().is_some_and(|w| w == verb)
            && kind.is_none_or(|k| words.iter().skip(1).any(|w| w == k))
    })
}

pub(crate) fn short(s: &str) -> String {
    let one_line = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > 200 {
        format!("{}...", one_line.chars().take(200).collect::<String>())
    } else {
        one_line
    }
}

/// A token of SQL text, as far as splitting statements needs.
#[derive(Debug, PartialEq, Eq)]
enum Tok<'a> {
    Word(&'a str),
    Semicolon,
    /// Anything else: quoted text, comments, whitespace, punctuation.
    Other(&'a str),
}

/// Tokenize: quotes ('...', E'...', "...", $tag$...$tag$) and comments
/// (--, nested /* */) are single tokens, so a `;` inside them is not a
/// statement end.
fn tokens(s: &str) -> Vec<(usize, usize, Tok<'_>)> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let start = i;
        let c = b[i];
        if c == b';' {
            i += 1;
            out.push((start, i, Tok::Semicolon));
            continue;
        }
        if c == b'-' && b.get(i + 1) == Some(&b'-') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == b'\'' || ((c == b'E' || c == b'e') && b.get(i + 1) == Some(&b'\'')) {
            let escapes = c != b'\'';
            i = skip_quoted(b, i + if escapes { 2 } else { 1 }, b'\'', escapes);
        } else if c == b'"' {
            i = skip_quoted(b, i + 1, b'"', false);
        } else if c == b'$' {
            // $tag$ ... $tag$ (a tag of letters, digits, underscores).
            let mut j = i + 1;
            while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                j += 1;
            }
            if j < b.len() && b[j] == b'$' && !b[i + 1..j].first().is_some_and(u8::is_ascii_digit) {
                let tag = &s[i..=j];
                match s[j + 1..].find(tag) {
                    Some(end) => i = j + 1 + end + tag.len(),
                    None => i = b.len(),
                }
            } else {
                i = j.max(i + 1);
            }
        } else if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            while i < b.len()
                && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'$' || b[i] >= 0x80)
            {
                i += 1;
            }
            out.push((start, i, Tok::Word(&s[start..i])));
            continue;
        } else {
            i += 1;
        }
        out.push((start, i.min(b.len()), Tok::Other(&s[start..i.min(b.len())])));
    }
    out
}

/// The end of a quoted token whose body starts at `i`: a doubled quote is
/// part of it, and with `escapes` (E'...') a backslash takes the next byte.
fn skip_quoted(b: &[u8], mut i: usize, quote: u8, escapes: bool) -> usize {
    while i < b.len() {
        if escapes && b[i] == b'\\' {
            i += 2;
        } else if b[i] == quote {
            if b.get(i + 1) == Some(&quote) {
                i += 2;
            } else {
                return i + 1;
            }
        } else {
            i += 1;
        }
    }
    b.len()
}

/// Split a query string into its statements (trimmed, empty ones left
/// out). A `BEGIN ATOMIC ... END` function body is one statement, as psql
/// and the server see it.
pub fn split_statements(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut depth = 0i32;
    let mut words = 0usize;
    let mut routine = false;
    for (a, e, t) in tokens(s) {
        match t {
            Tok::Word(w) => {
                let up = w.to_ascii_uppercase();
                words += 1;
                if words <= 4 && (up == "FUNCTION" || up == "PROCEDURE") {
                    routine = true;
                }
                if routine && (up == "BEGIN" || up == "CASE") {
                    depth += 1;
                } else if routine && up == "END" && depth > 0 {
                    depth -= 1;
                }
            }
            Tok::Semicolon if depth == 0 => {
                let stmt = s[start..a].trim();
                if !stmt.is_empty() {
                    out.push(stmt.to_string());
                }
                start = e;
                words = 0;
                routine = false;
            }
            _ => {}
        }
    }
    let stmt = s[start..].trim();
    if !stmt.is_empty() {
        out.push(stmt.to_string());
    }
    out
}

/// The first `n` words of a statement, upper-cased (comments skipped).
fn leading_words(stmt: &str, n: usize) -> Vec<String> {
    tokens(stmt)
        .into_iter()
        .filter_map(|(_, _, t)| match t {
            Tok::Word(w) => Some(w.to_ascii_uppercase()),
            _ => None,
        })
        .take(n)
        .collect()
}

/// `CREATE [UNIQUE] INDEX CONCURRENTLY`, `DROP INDEX CONCURRENTLY`,
/// `REINDEX ... CONCURRENTLY`, `DETACH PARTITION ... CONCURRENTLY`: the
/// same statement without the word, which cannot run in a transaction.
fn drop_concurrently(stmt: &str) -> String {
    let toks = tokens(stmt);
    let first: Vec<String> = leading_words(stmt, 3);
    let index_cmd = matches!(
        first
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice(),
        ["CREATE", "INDEX", ..]
            | ["CREATE", "UNIQUE", "INDEX"]
            | ["DROP", "INDEX", ..]
            | ["REINDEX", ..]
            | ["ALTER", "TABLE", ..]
    );
    if !index_cmd {
        return stmt.to_string();
    }
    let mut out = String::with_capacity(stmt.len());
    let mut last = 0;
    for (a, e, t) in toks {
        if let Tok::Word(w) = t {
            if w.eq_ignore_ascii_case("CONCURRENTLY") {
                out.push_str(&stmt[last..a]);
                last = e;
            }
        }
    }
    out.push_str(&stmt[last..]);
    out
}

/// The schema fingerprint of what a migration moves: one digest per
/// relation (columns, constraints, indexes, triggers, view definition,
/// comments, replica identity), function, type and schema of the user's
/// schemas. With `tables` (a filtered run), only those tables.
pub async fn fingerprint(
    c: &Client,
    tables: Option<&[String]>,
) -> Result<BTreeMap<String, String>> {
    let user = "n.nspname NOT IN ('pg_catalog', 'information_schema', '_pg_dbmigrator')
                AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'
                AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.objid = x.oid AND d.deptype = 'e')";
    let rel_filter = if tables.is_some() {
        "AND pg_catalog.format('%I.%I', n.nspname, x.relname) = ANY ($1::text[])"
    } else {
        "AND $1::text[] IS NOT NULL"
    };
    let sql = format!(
        "SELECT 'relation ' || pg_catalog.format('%I.%I', n.nspname, x.relname),
                pg_catalog.md5(pg_catalog.concat_ws('|', x.relkind, x.relreplident, x.relpersistence,
                  pg_catalog.obj_description(x.oid, 'pg_class'),
                  CASE WHEN x.relkind IN ('v', 'm') THEN pg_catalog.pg_get_viewdef(x.oid) END,
                  (SELECT pg_catalog.string_agg(pg_catalog.concat_ws(':', a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod),
                          a.attnotnull, a.attidentity, a.attgenerated, pg_catalog.pg_get_expr(ad.adbin, ad.adrelid),
                          pg_catalog.col_description(x.oid, a.attnum)), ',' ORDER BY a.attnum)
                     FROM pg_catalog.pg_attribute a
                     LEFT JOIN pg_catalog.pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
                    WHERE a.attrelid = x.oid AND a.attnum > 0 AND NOT a.attisdropped),
                  (SELECT pg_catalog.string_agg(co.conname || ' ' || pg_catalog.pg_get_constraintdef(co.oid), ',' ORDER BY co.conname)
                     FROM pg_catalog.pg_constraint co WHERE co.conrelid = x.oid),
                  (SELECT pg_catalog.string_agg(pg_catalog.pg_get_indexdef(i.indexrelid), ',' ORDER BY 1)
                     FROM pg_catalog.pg_index i WHERE i.indrelid = x.oid),
                  (SELECT pg_catalog.string_agg(pg_catalog.pg_get_triggerdef(t.oid), ',' ORDER BY t.tgname)
                     FROM pg_catalog.pg_trigger t WHERE t.tgrelid = x.oid AND NOT t.tgisinternal)))
           FROM pg_catalog.pg_class x JOIN pg_catalog.pg_namespace n ON n.oid = x.relnamespace
          WHERE x.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND {user} {rel_filter}
         UNION ALL
         SELECT 'function ' || pg_catalog.format('%I.%I', n.nspname, x.proname) || '(' || pg_catalog.pg_get_function_identity_arguments(x.oid) || ')',
                pg_catalog.md5(pg_catalog.concat_ws('|', x.prosrc, x.prorettype::pg_catalog.regtype::text, x.prokind,
                  x.provolatile, pg_catalog.obj_description(x.oid, 'pg_proc')))
           FROM pg_catalog.pg_proc x JOIN pg_catalog.pg_namespace n ON n.oid = x.pronamespace
          WHERE {user} AND {whole}
         UNION ALL
         SELECT 'type ' || pg_catalog.format('%I.%I', n.nspname, x.typname),
                pg_catalog.md5(pg_catalog.concat_ws('|', x.typtype, pg_catalog.obj_description(x.oid, 'pg_type'),
                  (SELECT pg_catalog.string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder) FROM pg_catalog.pg_enum e WHERE e.enumtypid = x.oid)))
           FROM pg_catalog.pg_type x JOIN pg_catalog.pg_namespace n ON n.oid = x.typnamespace
          WHERE x.typtype IN ('e', 'd', 'r', 'm') AND {user} AND {whole}
         UNION ALL
         SELECT 'schema ' || pg_catalog.quote_ident(n.nspname), pg_catalog.md5(pg_catalog.concat_ws('|', pg_catalog.obj_description(n.oid, 'pg_namespace')))
           FROM pg_catalog.pg_namespace n, LATERAL (SELECT n.oid) x
          WHERE {user} AND {whole}",
        whole = if tables.is_some() { "false" } else { "true" },
    );
    let list: Vec<String> = tables.map(<[String]>::to_vec).unwrap_or_default();
    let rows = c
        .query(&sql, &[&list])
        .await
        .map_err(|e| MigrationError::db("reading the schema fingerprint of the source", e))?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get::<_, String>(0),
                r.get::<_, Option<String>>(1).unwrap_or_default(),
            )
        })
        .collect())
}

/// The objects that differ between two fingerprints: added, removed or
/// changed, each named once.
pub fn fingerprint_changes(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in before {
        match after.get(k) {
            None => out.push(format!("{k} (dropped)")),
            Some(w) if w != v => out.push(format!("{k} (changed)")),
            _ => {}
        }
    }
    for k in after.keys() {
        if !before.contains_key(k) {
            out.push(format!("{k} (created)"));
        }
    }
    out
}

/// What the applier recorded as not reproduced on the target, one line
/// per object (its name, why, and the source transaction).
async fn unreplayed(dst: &Client) -> Result<Vec<String>> {
    let what = "reading the schema changes that could not be reproduced on the target";
    let exists = crate::pg::relation_exists(dst, "_pg_dbmigrator.unreplayed")
        .await
        .map_err(|e| MigrationError::db(what, e))?;
    if !exists {
        return Ok(Vec::new());
    }
    Ok(dst
        .query_typed(
            "SELECT object, reason, commit_lsn FROM _pg_dbmigrator.unreplayed ORDER BY object",
            &[],
        )
        .await
        .map_err(|e| MigrationError::db(what, e))?
        .iter()
        .map(|r| {
            let (o, why, lsn): (String, String, String) = (r.get(0), r.get(1), r.get(2));
            format!("{o}: {why} (source transaction committed at {lsn})")
        })
        .collect())
}

/// The cutover's schema check, run before the fence and again under it
/// (`drained`: after the drain to the fence).
///
/// With capture: every table created during the run whose changes could
/// not stream must hold the same rows on both sides. Without: the
/// fingerprint now must equal the one taken at the snapshot, or else the
/// target's (the user applied the same changes there). Refuses with the
/// list of objects; the caller lifts the fence and streaming goes on.
pub(crate) async fn cutover_guard(
    src: &Client,
    dst: &Client,
    state: &crate::resume::OnlineState,
    scope: Option<&[String]>,
    drained: bool,
) -> Result<()> {
    if state.ddl_capture {
        // Changes made inside functions that the applier could not
        // reproduce: known as soon as applied, so refused before the fence.
        let unreplayed = unreplayed(dst).await?;
        if !unreplayed.is_empty() {
            return Err(MigrationError::Preflight(format!(
                "the cutover is refused: schema changes made on the source inside a function, procedure or DO block \
                 could not be reproduced on the target: {}. The source stays writable and streaming goes on; \
                 make the same changes on the target, delete their rows from _pg_dbmigrator.unreplayed there and ask for the cutover again, \
                 or run `pg_dbmigrator cleanup` and migrate again",
                unreplayed.join("; ")
            )));
        }
        // Rows compare only once the stream is drained (before, the
        // target is merely behind).
        if !drained {
            return Ok(());
        }
        let exists = crate::pg::relation_exists(dst, "_pg_dbmigrator.unstreamed")
            .await
            .map_err(|e| {
                MigrationError::db("reading the tables whose changes did not stream", e)
            })?;
        if !exists {
            return Ok(());
        }
        let rows = dst
            .query_typed(
                "SELECT name, reason FROM _pg_dbmigrator.unstreamed ORDER BY name",
                &[],
            )
            .await
            .map_err(|e| {
                MigrationError::db("reading the tables whose changes did not stream", e)
            })?;
        let mut bad = Vec::new();
        for r in rows {
            let (name, reason): (String, String) = (r.get(0), r.get(1));
            // A table dropped meanwhile is gone on both sides: its query
            // fails and it is passed over.
            let sql = format!("SELECT pg_catalog.count(*) FROM ONLY {name}");
            let (a, b) = tokio::join!(
                crate::pg::query_one_once(src, &sql),
                crate::pg::query_one_once(dst, &sql)
            );
            let (a, b): (i64, i64) = match (a, b) {
                (Ok(a), Ok(b)) => (a.get(0), b.get(0)),
                _ => continue,
            };
            if a > 0 && a != b {
                bad.push(format!(
                    "{name}: {a} row(s) on the source, {b} on the target ({reason})"
                ));
            }
        }
        if !bad.is_empty() {
            return Err(MigrationError::Preflight(format!(
                "the cutover is refused: tables created during the migration hold rows that did not stream: {}. \
                 Give each a primary key (or REPLICA IDENTITY FULL) and copy its rows to the target yourself, \
                 or run `pg_dbmigrator cleanup` and migrate again",
                bad.join("; ")
            )));
        }
        return Ok(());
    }
    let Some(before) = &state.fingerprint else {
        return Ok(());
    };
    let now = fingerprint(src, scope).await?;
    let changes = fingerprint_changes(before, &now);
    if changes.is_empty() {
        return Ok(());
    }
    // The user may have made the same changes on the target.
    let target_now = fingerprint(dst, scope).await?;
    if target_now == now {
        tracing::info!(
            objects = changes.len(),
            "the source's schema changed during the migration and the target has the same changes"
        );
        return Ok(());
    }
    let mut listed: Vec<String> = changes.iter().take(50).cloned().collect();
    if changes.len() > 50 {
        listed.push(format!("and {} more", changes.len() - 50));
    }
    Err(MigrationError::Preflight(format!(
        "the cutover is refused: the schema changed on the source during the migration and the changes could not be captured \
         (capture needs a superuser source role, the whole database and PostgreSQL 14+): {}. \
         The source stays writable and streaming goes on; make the same changes on the target and ask for the cutover again, \
         or run `pg_dbmigrator cleanup` and migrate again",
        listed.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(sql: &str, tags: &[&str]) -> DdlMessage {
        DdlMessage {
            sql: sql.into(),
            role: "app".into(),
            search_path: "public".into(),
            tags: tags.iter().map(|s| s.to_string()).collect(),
            published: vec![],
            unpublished: vec![],
            published_with_rows: vec![],
            dropped: vec![],
            capture_error: None,
            temporary: false,
            nested: false,
            effects: vec![],
            context: None,
        }
    }

    #[test]
    fn statements_split_outside_quotes_comments_and_atomic_bodies() {
        let s = "ALTER TABLE t ADD c text DEFAULT 'a;b'; -- x; y\n\
                 COMMENT ON TABLE t IS $$one; two$$; /* a /* nested; */ ; */ \
                 CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT CASE WHEN true THEN 2 END; END; \
                 CREATE TABLE \"x;y\" (id int);";
        let v = split_statements(s);
        assert_eq!(v.len(), 4, "{v:#?}");
        assert!(v[0].ends_with("'a;b'"));
        assert!(v[1].contains("$$one; two$$"));
        assert!(
            v[2].contains("BEGIN ATOMIC") && v[2].ends_with("END"),
            "{}",
            v[2]
        );
        assert_eq!(v[3], "CREATE TABLE \"x;y\" (id int)");
        assert_eq!(
            split_statements("SELECT E'it\\'s;'; SELECT 1"),
            vec!["SELECT E'it\\'s;'", "SELECT 1"]
        );
    }

    #[test]
    fn concurrently_is_dropped_only_where_it_is_the_option() {
        let r = replay_plan(
            &msg(
                "CREATE UNIQUE INDEX CONCURRENTLY i ON t (a)",
                &["CREATE INDEX"],
            ),
            0,
        );
        assert_eq!(r.unwrap(), "CREATE UNIQUE INDEX  i ON t (a)");
        let r = replay_plan(
            &msg("DROP INDEX CONCURRENTLY IF EXISTS i", &["DROP INDEX"]),
            0,
        );
        assert_eq!(r.unwrap(), "DROP INDEX  IF EXISTS i");
        let r = replay_plan(
            &msg("COMMENT ON TABLE t IS 'built CONCURRENTLY'", &["COMMENT"]),
            0,
        );
        assert_eq!(r.unwrap(), "COMMENT ON TABLE t IS 'built CONCURRENTLY'");
    }

    #[test]
    fn each_firing_replays_its_own_statement_and_dml_is_left_to_the_stream() {
        let q = "BEGIN; SET search_path = app; ALTER TABLE t ADD c int; UPDATE t SET c = 1; \
                 CREATE UNIQUE INDEX i ON t (c); CREATE ROLE r; COMMIT;";
        assert_eq!(
            replay_plan(&msg(q, &["ALTER TABLE"]), 0).unwrap(),
            "ALTER TABLE t ADD c int"
        );
        assert_eq!(
            replay_plan(&msg(q, &["CREATE INDEX"]), 1).unwrap(),
            "CREATE UNIQUE INDEX i ON t (c)"
        );
        // A third firing has no statement of its own.
        assert!(replay_plan(&msg(q, &["CREATE TABLE"]), 2).is_err());
        // DDL run by a function or a DO block.
        let e = replay_plan(
            &msg("SELECT partman.run_maintenance()", &["CREATE TABLE"]),
            0,
        )
        .unwrap_err();
        assert!(
            e.contains("run_maintenance") && e.contains("CREATE TABLE"),
            "{e}"
        );
        assert!(replay_plan(
            &msg(
                "DO $$ BEGIN EXECUTE 'CREATE TABLE z()'; END $$",
                &["CREATE TABLE"]
            ),
            0
        )
        .is_err());
        // ... even beside a DDL statement of another kind.
        let e = replay_plan(
            &msg(
                "SELECT make_tables(); ALTER TABLE t ADD d int",
                &["CREATE TABLE"],
            ),
            0,
        );
        assert!(e.is_err());
        assert!(replay_plan(&msg("SELECT * INTO t2 FROM t", &["SELECT INTO"]), 0).is_ok());
        assert_eq!(
            replay_plan(
                &msg(
                    "CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
                    &["CREATE FUNCTION"]
                ),
                0
            )
            .unwrap(),
            "CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'"
        );
        assert_eq!(
            replay_plan(&msg("CREATE TEMP TABLE x (a int)", &["CREATE TABLE"]), 0).unwrap(),
            ""
        );
        let mut failed = msg("ALTER TABLE t ADD e int", &["ALTER TABLE"]);
        failed.capture_error = Some("boom".into());
        assert!(replay_plan(&failed, 0).unwrap_err().contains("boom"));
    }

    #[test]
    fn temporary_firings_replay_nothing_and_take_only_their_own_statement() {
        let mut t = msg(
            "REFRESH MATERIALIZED VIEW CONCURRENTLY mv",
            &["CREATE TABLE"],
        );
        t.temporary = true;
        assert_eq!(replay_plan(&t, 0).unwrap(), "");
        assert!(!temporary_takes_statement(&t, 0));
        // The REFRESH's own firing is still the first statement.
        let own = msg(&t.sql, &["REFRESH MATERIALIZED VIEW"]);
        assert_eq!(
            replay_plan(&own, 0).unwrap(),
            "REFRESH MATERIALIZED VIEW CONCURRENTLY mv"
        );
        let mut t = msg("SELECT f(); ALTER TABLE t ADD c int", &["DROP TABLE"]);
        t.temporary = true;
        assert!(!temporary_takes_statement(&t, 0));
        let mut t = msg(
            "DROP TABLE scratch; ALTER TABLE t ADD c int",
            &["DROP TABLE"],
        );
        t.temporary = true;
        assert!(temporary_takes_statement(&t, 0));
        assert_eq!(
            replay_plan(&msg(&t.sql, &["ALTER TABLE"]), 1).unwrap(),
            "ALTER TABLE t ADD c int"
        );
        // A firing of real DDL on a temporary statement is out of step.
        assert!(replay_plan(
            &msg("SELECT f(); CREATE TEMP TABLE x (a int)", &["ALTER TABLE"]),
            0
        )
        .is_err());
    }

    #[test]
    fn a_nested_statement_is_read_from_its_call_stack() {
        let ours = "PL/pgSQL function _pg_dbmigrator.capture(text,text,text) line 20 at GET DIAGNOSTICS\n\
                    SQL statement \"SELECT _pg_dbmigrator.capture(current_user::text, pg_catalog.current_setting('search_path'), tg_tag)\"\n\
                    PL/pgSQL function _pg_dbmigrator.on_ddl() line 3 at PERFORM\n";
        let plpgsql = format!(
            "{ours}SQL statement \"CREATE TYPE mood AS ENUM ('a', \"b\")\nNOT NULL\"\nPL/pgSQL function inline_code_block line 2 at SQL statement"
        );
        assert_eq!(
            nested_statement(&plpgsql).unwrap(),
            "CREATE TYPE mood AS ENUM ('a', \"b\")\nNOT NULL"
        );
        let nested_call = format!(
            "{ours}SQL statement \"GRANT SELECT ON t TO r\"\nPL/pgSQL function g() line 1 at EXECUTE\nSQL statement \"SELECT g()\"\nPL/pgSQL function f() line 1 at PERFORM"
        );
        assert_eq!(
            nested_statement(&nested_call).unwrap(),
            "GRANT SELECT ON t TO r"
        );
        assert_eq!(
            nested_statement(&format!("{ours}SQL function \"g\" statement 1")),
            None
        );
        assert_eq!(nested_statement("PL/pgSQL function x() line 1"), None);
    }

    #[test]
    fn fingerprint_changes_name_each_object() {
        let a: BTreeMap<String, String> = [("relation public.t", "1"), ("relation public.u", "2")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let b: BTreeMap<String, String> = [("relation public.t", "9"), ("relation public.w", "3")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(
            fingerprint_changes(&a, &b),
            vec![
                "relation public.t (changed)",
                "relation public.u (dropped)",
                "relation public.w (created)"
            ]
        );
    }
}
