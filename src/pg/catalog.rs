//! Catalog queries the copier and verifier need: which tables, sequences and
//! large objects are in scope, and which COPY format each table can use.
//!
//! Filters are matched server-side with the POSIX regexes that
//! [`crate::config::filter`] builds from pg_dump-style patterns, as pg_dump
//! itself does. All queries work on PostgreSQL 12 and later.

use std::collections::HashMap;

use tokio_postgres::Client;

use crate::config::filter::CompiledFilters;
use crate::error::{MigrationError, Result};
use crate::pg::names::NameList;
use crate::pg::quote;

/// First OID handed to user objects; below it everything is built in and has
/// the same OID on every server.
pub const FIRST_NORMAL_OID: u32 = 16384;

/// A table whose rows are copied.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TableInfo {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    /// Columns that carry data, in source order (generated columns left out:
    /// the target computes them).
    pub columns: NameList,
    /// Every column, generated ones included, in source order.
    pub all_columns: NameList,
    /// On-disk size of the heap (bytes), for ordering and progress.
    pub bytes: i64,
    /// The planner's row estimate (-1 when never analyzed).
    pub row_estimate: f64,
    /// True when every column's binary form is safe to move between servers
    /// (no user-defined OIDs embedded, binary I/O functions present).
    pub binary_safe: bool,
    /// The top-most partitioned table, for partitions.
    pub partition_root: Option<String>,
    /// `format_type()` of each column in `columns`: the target must agree
    /// for binary COPY to work.
    pub column_types: NameList,
    /// For an extension's configuration table (`pg_extension_config_dump`):
    /// its `extcondition`, the `WHERE ...` that selects the user's rows
    /// (empty: all rows). Such a table already exists on the target with
    /// the extension's own rows, so it is appended to, never emptied.
    pub row_filter: Option<String>,
    /// Set when the target holds this table's rows in another shape (a
    /// data-only run into a schema the user prepared): the relation COPY
    /// loads into. Found by [`target_shapes`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_into: Option<LoadInto>,
}

impl TableInfo {
    /// `schema.name`, quoted: the key used in the resume token and in reports.
    pub fn qualified(&self) -> String {
        quote::qualified(&self.schema, &self.name)
    }

    /// The target relation its rows go into, quoted: itself, or the one
    /// [`TableInfo::load_into`] names.
    pub fn target_name(&self) -> String {
        match &self.load_into {
            Some(l) => l.relation.clone(),
            None => self.qualified(),
        }
    }
}

/// Where a source table's rows go when the target's shape differs: a
/// plain table into one partitioned on the target, or a partition of the
/// source (whose own name the target lacks) into its partition root, plain
/// or partitioned there.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LoadInto {
    /// The target relation, quoted `schema.name`.
    pub relation: String,
    /// Partitioned on the target: COPY into it routes each row to its
    /// partition. It can be neither emptied with `TRUNCATE ONLY` nor
    /// loaded with FREEZE, and it is read without `ONLY`.
    pub partitioned: bool,
}

/// How a source table stands on the target (see [`target_shapes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetShape {
    /// Neither it nor its partition root is there.
    Missing,
    /// A plain table of the same name: rows go straight in.
    Plain { columns: NameList, types: NameList },
    /// Rows go into another shape; `columns`/`types` are that relation's.
    Into {
        into: LoadInto,
        columns: NameList,
        types: NameList,
    },
    /// A relation of the same name that cannot take rows (its relkind).
    Other(String),
}

/// Column `i` of `r`, a text array (NULL for none), as one allocation.
fn name_list(r: &tokio_postgres::Row, i: usize) -> NameList {
    r.get::<_, Option<Vec<&str>>>(i)
        .unwrap_or_default()
        .into_iter()
        .collect()
}

/// For each source table, how the target can take its rows: its own name
/// as a plain table, or as a partitioned one (COPY routes the rows), or,
/// for a source partition the target lacks, its partition root (plain or
/// partitioned): so a partitioned source loads into a plain target table
/// leaf by leaf, each row once, and into a differently partitioned one.
///
/// Each table is found by its qualified name (`to_regclass`, one catalog
/// cache lookup), not by joining `pg_class` on `relname`: in a database of
/// tenant schemas every name is in every schema, and that join read all
/// 2,000 `audit` tables for each of 10,000 tables (3.9 s).
pub async fn target_shapes(dst: &Client, tables: &[TableInfo]) -> Result<Vec<TargetShape>> {
    let schemas: Vec<&str> = tables.iter().map(|t| t.schema.as_str()).collect();
    let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    let roots: Vec<Option<&str>> = tables.iter().map(|t| t.partition_root.as_deref()).collect();
    // Taken as the rows arrive: at 25,000 tables the answer held whole,
    // with each row's names as lists of strings, was 13 MB beside the
    // finished script, the run's peak.
    let mut shapes = Vec::with_capacity(tables.len());
    let text_array = tokio_postgres::types::Type::TEXT_ARRAY;
    let typed: [(&(dyn tokio_postgres::types::ToSql + Sync), _); 3] = [
        (&schemas, text_array.clone()),
        (&names, text_array.clone()),
        (&roots, text_array),
    ];
    super::each_row(
        dst,
        "SELECT u.ord, k.own, k.kind, k.name,
                    (SELECT pg_catalog.array_agg(a.attname::text ORDER BY a.attnum) FROM pg_catalog.pg_attribute a
                      WHERE a.attrelid = k.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''),
                    (SELECT pg_catalog.array_agg(pg_catalog.format_type(a.atttypid, a.atttypmod) ORDER BY a.attnum) FROM pg_catalog.pg_attribute a
                      WHERE a.attrelid = k.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '')
               FROM ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::text[]), pg_catalog.unnest($3::text[]))
                    WITH ORDINALITY AS u(s, r, root, ord)
               LEFT JOIN LATERAL (
                    SELECT c.oid, p.own, c.relkind::text AS kind, pg_catalog.format('%I.%I', cn.nspname, c.relname) AS name
                      FROM (SELECT pg_catalog.to_regclass(pg_catalog.format('%I.%I', u.s, u.r))::oid AS oid, true AS own
                            UNION ALL
                            SELECT pg_catalog.to_regclass(u.root)::oid, false
                             WHERE u.root IS NOT NULL AND pg_catalog.to_regclass(u.root) IS NOT NULL) p
                      JOIN pg_catalog.pg_class c ON c.oid = p.oid
                      JOIN pg_catalog.pg_namespace cn ON cn.oid = c.relnamespace
                     WHERE p.own OR c.relkind IN ('r', 'p')
                     ORDER BY p.own DESC LIMIT 1) k ON true
              ORDER BY u.ord",
        typed,
        |r| {
            let own: Option<bool> = r.get(1);
            let kind: Option<&str> = r.get(2);
            let name: Option<String> = r.get(3);
            let names = |i: usize| name_list(&r, i);
            shapes.push(match (own, kind, name) {
                (Some(true), Some("r"), _) => TargetShape::Plain {
                    columns: names(4),
                    types: names(5),
                },
                (Some(own), Some(k @ ("r" | "p")), Some(relation)) if !own || k == "p" => {
                    TargetShape::Into {
                        into: LoadInto {
                            relation,
                            partitioned: k == "p",
                        },
                        columns: names(4),
                        types: names(5),
                    }
                }
                (Some(_), Some(k), _) => TargetShape::Other(k.to_string()),
                _ => TargetShape::Missing,
            })
        },
    )
    .await
    .map_err(|e| MigrationError::db("checking tables on the target", e))?;
    Ok(shapes)
}

/// The partitions of the database (at any level), each with its partition
/// root, as quoted `schema.name`. Verify uses it to tell a partition of a
/// re-shaped table (compared through its root) from a missing or extra one.
pub async fn partition_roots(client: &Client) -> Result<HashMap<String, String>> {
    Ok(client
        .query_typed(
            "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname),
                    (SELECT pg_catalog.format('%I.%I', rn.nspname, r.relname)
                       FROM pg_catalog.pg_class r JOIN pg_catalog.pg_namespace rn ON rn.oid = r.relnamespace
                      WHERE r.oid = pg_catalog.pg_partition_root(c.oid))
               FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relispartition",
            &[],
        )
        .await
        .map_err(|e| MigrationError::db("listing partitions", e))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// A sequence and its current state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SequenceInfo {
    pub schema: String,
    pub name: String,
}

impl SequenceInfo {
    pub fn qualified(&self) -> String {
        quote::qualified(&self.schema, &self.name)
    }
}

/// A large object's id and owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LargeObjectInfo {
    pub oid: u32,
    pub owner: String,
    /// `lomacl` as text, and the default it is compared with.
    pub acl: Option<String>,
    pub acl_default: String,
    pub comment: Option<String>,
}

/// Heap pages `[start, end)`; `end = None` reads to the end of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PageRange {
    pub start: u64,
    pub end: Option<u64>,
}

impl PageRange {
    /// The `WHERE` condition selecting these pages (a TID range scan).
    pub fn predicate(&self) -> String {
        let lo = format!("ctid >= '({},0)'::pg_catalog.tid", self.start);
        match self.end {
            Some(end) => format!("{lo} AND ctid < '({end},0)'::pg_catalog.tid"),
            None => lo,
        }
    }
}

/// `EXISTS` over the pattern pairs bound at `$schemas` / `$names`: the
/// relation `c`, or the root of its partition tree, matches one of them.
fn matches_patterns(schemas: u8, names: u8) -> String {
    format!(
        "EXISTS (
          SELECT 1 FROM ROWS FROM (pg_catalog.unnest(${schemas}::text[]), pg_catalog.unnest(${names}::text[])) AS p(sre, nre),
               LATERAL (SELECT c.oid AS o UNION ALL
                        SELECT r.oid FROM pg_catalog.pg_class r
                        WHERE r.oid = pg_catalog.pg_partition_root(c.oid) AND r.oid <> c.oid) cand
               JOIN pg_catalog.pg_class cc ON cc.oid = cand.o
               JOIN pg_catalog.pg_namespace cn ON cn.oid = cc.relnamespace
          WHERE (p.sre IS NULL OR cn.nspname ~ p.sre) AND cc.relname ~ p.nre)"
    )
}

/// The WHERE-clause fragment and parameters that restrict `pg_class c` joined
/// with `pg_namespace n` to user objects in scope. Parameters $1..$6.
/// `n` is a schema of the user's (not a system, TOAST, temporary or our own one).
const USER_SCHEMA_SQL: &str = r#"n.nspname NOT IN ('pg_catalog', 'information_schema', '_pg_dbmigrator')
    AND n.nspname NOT LIKE 'pg\_toast%'
    AND n.nspname NOT LIKE 'pg\_temp\_%'"#;

/// `c` belongs to an extension.
const EXTENSION_MEMBER_SQL: &str = "EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                    WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                      AND d.objid = c.oid AND d.deptype = 'e')";

/// `c`'s `extcondition` when it is an extension's configuration table
/// (`''` for all rows), NULL otherwise.
const EXTCONDITION_SQL: &str = "(SELECT COALESCE(x.extcondition[u.i], '') FROM pg_catalog.pg_extension x, \
           pg_catalog.unnest(x.extconfig) WITH ORDINALITY AS u(oid, i) WHERE u.oid = c.oid LIMIT 1)";

static SCOPE_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        r#"
    {USER_SCHEMA_SQL}
    AND NOT {EXTENSION_MEMBER_SQL}
    AND (cardinality($1::text[]) = 0 OR n.nspname ~ ANY ($1::text[]))
    AND NOT (n.nspname ~ ANY ($2::text[]))
    AND (cardinality($4::text[]) = 0 OR {})
    AND NOT {}
"#,
        matches_patterns(3, 4),
        matches_patterns(5, 6)
    )
});

/// The regexes of pattern pairs as two parallel bind parameters.
/// Catalog reads whose parameters are all `text[]` (the filters'
/// patterns), run once: unnamed statements with their types given, one
/// round trip each where a prepared statement costs two.
trait QueryArrays {
    async fn query_arrays(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> std::result::Result<Vec<tokio_postgres::Row>, tokio_postgres::Error>;
}

impl QueryArrays for Client {
    async fn query_arrays(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> std::result::Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
        let typed: Vec<_> = params
            .iter()
            .map(|p| (*p, tokio_postgres::types::Type::TEXT_ARRAY))
            .collect();
        self.query_typed(sql, &typed).await
    }
}

fn split_pairs(pairs: &[(Option<String>, String)]) -> (Vec<Option<String>>, Vec<String>) {
    pairs.iter().cloned().unzip()
}

/// Bind parameters for [`SCOPE_SQL`].
struct ScopeParams {
    schemas: Vec<String>,
    exclude_schemas: Vec<String>,
    t_schema: Vec<Option<String>>,
    t_name: Vec<String>,
    x_schema: Vec<Option<String>>,
    x_name: Vec<String>,
}

impl ScopeParams {
    fn new(f: &CompiledFilters) -> Self {
        let (t_schema, t_name) = split_pairs(&f.tables);
        let (x_schema, x_name) = split_pairs(&f.exclude_tables);
        ScopeParams {
            schemas: f.schemas.clone(),
            exclude_schemas: f.exclude_schemas.clone(),
            t_schema,
            t_name,
            x_schema,
            x_name,
        }
    }
    fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 6] {
        [
            &self.schemas,
            &self.exclude_schemas,
            &self.t_schema,
            &self.t_name,
            &self.x_schema,
            &self.x_name,
        ]
    }
}

/// Tables whose rows are copied: ordinary tables, partitions and inheritance
/// children (relkind `r`), permanent or unlogged, not owned by an extension,
/// largest first. Partitioned parents hold no rows and are reached through
/// their leaves.
/// `--exclude-table-data` leaves a table (or a partitioned table's
/// partitions) out of this list, not out of the schema.
pub async fn list_tables(client: &Client, filters: &CompiledFilters) -> Result<Vec<TableInfo>> {
    let scope = ScopeParams::new(filters);
    let (d_schema, d_name) = split_pairs(&filters.exclude_table_data);
    let [a, b, c, d, e, f] = scope.params();
    read_tables(
        client,
        &format!(
            "c.relkind = 'r' AND c.relpersistence IN ('p', 'u') AND {} AND NOT {}",
            &*SCOPE_SQL,
            matches_patterns(7, 8)
        ),
        "NULL::text",
        &[a, b, c, d, e, f, &d_schema, &d_name],
    )
    .await
}

/// The relations a full migration's schema covers under `filters` (pg_dump
/// `-n/-N/-t/-T`, with `-t` bringing a partitioned table's partitions as
/// for the data): tables, views, materialized views, foreign tables and
/// sequences in scope, and the sequences a table in scope owns.
pub async fn selected_relations(
    client: &Client,
    filters: &CompiledFilters,
) -> Result<std::collections::HashSet<u32>> {
    let sql = format!(
        "SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
          WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND c.relpersistence <> 't' AND {}",
        &*SCOPE_SQL
    );
    let scope = ScopeParams::new(filters);
    let mut out: std::collections::HashSet<u32> = client
        .query_arrays(&sql, &scope.params())
        .await
        .map_err(|e| MigrationError::db("listing the relations the filters select", e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let owned = client
        .query_typed(
            "SELECT d.objid, d.refobjid FROM pg_catalog.pg_depend d
               JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S'
              WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
                AND d.deptype IN ('a', 'i')",
            &[],
        )
        .await
        .map_err(|e| MigrationError::db("listing owned sequences", e))?;
    for r in owned {
        if out.contains(&r.get::<_, u32>(1)) {
            out.insert(r.get(0));
        }
    }
    Ok(out)
}

/// Generated columns of child tables (inheritance children and partitions)
/// whose parent's column is not generated (`schema.table.column`), which
/// PostgreSQL 16 and later refuse to create.
pub async fn generated_columns_under_plain_parents(client: &Client) -> Result<Vec<String>> {
    Ok(client
        .query_typed(
            "SELECT DISTINCT pg_catalog.format('%I.%I.%I', n.nspname, c.relname, a.attname)
               FROM pg_catalog.pg_attribute a
               JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
               JOIN pg_catalog.pg_inherits i ON i.inhrelid = c.oid
               JOIN pg_catalog.pg_attribute pa ON pa.attrelid = i.inhparent AND pa.attname = a.attname
                                              AND NOT pa.attisdropped
              WHERE a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated <> '' AND pa.attgenerated = ''
                AND c.relkind IN ('r', 'p')
              ORDER BY 1",
            &[],
        )
        .await
        .map_err(|e| MigrationError::db("listing generated columns of child tables", e))?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// The relations an `--exclude-table` pattern names (partitions through
/// their root, as for the data): the schema filter never brings them along.
pub async fn excluded_relations(
    client: &Client,
    filters: &CompiledFilters,
) -> Result<std::collections::HashSet<u32>> {
    if filters.exclude_tables.is_empty() {
        return Ok(Default::default());
    }
    let (x_schema, x_name) = split_pairs(&filters.exclude_tables);
    let sql = format!(
        "SELECT c.oid FROM pg_catalog.pg_class c WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND {}",
        matches_patterns(1, 2)
    );
    Ok(client
        .query_arrays(&sql, &[&x_schema, &x_name])
        .await
        .map_err(|e| MigrationError::db("listing the relations --exclude-table names", e))?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// What decides whether and when a materialized view is refreshed.
#[derive(Debug, Default)]
pub struct MatviewRefresh {
    /// Materialized views that stay unpopulated on the target, as pg_dump
    /// leaves them: those unpopulated on the source, those whose data
    /// `--exclude-table-data` leaves out, and every materialized view that
    /// reads one of those (directly or through views), which could not be
    /// refreshed.
    pub unpopulated: std::collections::HashSet<u32>,
    /// `(reader, read)`: materialized view `reader` reads materialized view
    /// `read`, directly or through views, so its refresh must come after.
    pub reads: Vec<(u32, u32)>,
}

/// The relations each view or materialized view reads (its `_RETURN` rule's
/// dependencies), as a CTE `reads(reader, rel)`.
const VIEW_READS_CTE: &str = "reads(reader, rel) AS (
             SELECT DISTINCT r.ev_class, d.refobjid
               FROM pg_catalog.pg_rewrite r
               JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass
                AND d.objid = r.oid AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
                AND d.refobjid <> r.ev_class
         )";

/// See [`MatviewRefresh`].
pub async fn matview_refresh(client: &Client, filters: &CompiledFilters) -> Result<MatviewRefresh> {
    let (d_schema, d_name) = split_pairs(&filters.exclude_table_data);
    let unpopulated_sql = format!(
        "WITH RECURSIVE {VIEW_READS_CTE}, empty(oid) AS (
             SELECT c.oid FROM pg_catalog.pg_class c
              WHERE c.relkind = 'm' AND (NOT c.relispopulated OR {})
             UNION
             SELECT rd.reader FROM reads rd JOIN empty e ON rd.rel = e.oid
         )
         SELECT e.oid FROM empty e JOIN pg_catalog.pg_class c ON c.oid = e.oid WHERE c.relkind = 'm'",
        matches_patterns(1, 2)
    );
    let reads_sql = format!(
        "WITH RECURSIVE {VIEW_READS_CTE}, through(mv, rel) AS (
             SELECT rd.reader, rd.rel FROM reads rd
               JOIN pg_catalog.pg_class c ON c.oid = rd.reader AND c.relkind = 'm'
             UNION
             SELECT t.mv, rd.rel FROM through t
               JOIN pg_catalog.pg_class v ON v.oid = t.rel AND v.relkind = 'v'
               JOIN reads rd ON rd.reader = t.rel
         )
         SELECT t.mv, t.rel FROM through t
           JOIN pg_catalog.pg_class c ON c.oid = t.rel AND c.relkind = 'm'"
    );
    let what = "reading which materialized views read others";
    let unpopulated = client
        .query_arrays(&unpopulated_sql, &[&d_schema, &d_name])
        .await
        .map_err(|e| MigrationError::db(what, e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let reads = client
        .query_typed(&reads_sql, &[])
        .await
        .map_err(|e| MigrationError::db(what, e))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    Ok(MatviewRefresh { unpopulated, reads })
}

/// The schemas any of the regexes `patterns` matches (none for no pattern).
pub async fn schemas_matching(
    client: &Client,
    patterns: &[String],
) -> Result<std::collections::HashSet<String>> {
    Ok(client
        .query_arrays(
            "SELECT n.nspname::text FROM pg_catalog.pg_namespace n WHERE n.nspname ~ ANY ($1::text[])",
            &[&patterns],
        )
        .await
        .map_err(|e| MigrationError::db("listing the schemas the filters exclude", e))?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// The schemas `--schema` / `--exclude-schema` leave in scope (all of
/// them without either), by name.
pub async fn schemas_in_scope(
    client: &Client,
    filters: &CompiledFilters,
) -> Result<std::collections::HashSet<String>> {
    Ok(client
        .query_arrays(
            "SELECT n.nspname::text FROM pg_catalog.pg_namespace n
              WHERE (cardinality($1::text[]) = 0 OR n.nspname ~ ANY ($1::text[]))
                AND NOT (n.nspname ~ ANY ($2::text[]))",
            &[&filters.schemas, &filters.exclude_schemas],
        )
        .await
        .map_err(|e| MigrationError::db("listing the schemas the filters select", e))?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// The data a run copies, locked on the snapshot session: the tables and
/// sequences in scope, with `extension_data` the user's rows in extensions'
/// configuration tables and their sequences (as pg_dump carries them;
/// `CREATE EXTENSION` on the target brings only the extension's own rows),
/// and with `large_objects` the large objects.
pub async fn data_in_scope(
    client: &Client,
    filters: &CompiledFilters,
    extension_data: bool,
    large_objects: bool,
) -> Result<(Vec<TableInfo>, Vec<SequenceInfo>, Vec<LargeObjectInfo>)> {
    let mut tables = list_tables(client, filters).await?;
    let mut seqs = list_sequences(client, filters).await?;
    if extension_data {
        tables.extend(list_extension_config_tables(client).await?);
        seqs.extend(list_extension_config_sequences(client).await?);
    }
    lock_tables(client, &tables).await?;
    let los = if large_objects {
        list_large_objects(client).await?
    } else {
        Vec::new()
    };
    Ok((tables, seqs, los))
}

/// Extensions' configuration tables (`pg_extension.extconfig`), each with
/// its `extcondition`. pg_dump dumps the rows that match it: rows the user
/// added (a custom SRID in PostGIS's `spatial_ref_sys`, pg_partman's
/// `part_config`), which `CREATE EXTENSION` on the target does not bring.
pub async fn list_extension_config_tables(client: &Client) -> Result<Vec<TableInfo>> {
    read_tables(
        client,
        "c.relkind = 'r' AND EXISTS (SELECT 1 FROM pg_catalog.pg_extension x, \
           pg_catalog.unnest(x.extconfig) WITH ORDINALITY AS u(oid, i) WHERE u.oid = c.oid)",
        EXTCONDITION_SQL,
        &[],
    )
    .await
}

/// Extensions' configuration tables, split by whether they have a replica
/// identity a publication can use (a primary key, an identity index, or
/// FULL): `(with, without)`, qualified names.
pub async fn extension_config_tables_by_identity(
    client: &Client,
) -> Result<(Vec<String>, Vec<String>)> {
    let rows = client
        .query_typed(
            "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname),
                    c.relreplident IN ('f', 'i')
                    OR (c.relreplident = 'd' AND EXISTS (SELECT 1 FROM pg_catalog.pg_index i
                                                          WHERE i.indrelid = c.oid AND i.indisprimary))
               FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind = 'r' AND c.relpersistence = 'p'
                AND c.oid IN (SELECT pg_catalog.unnest(x.extconfig) FROM pg_catalog.pg_extension x)
              ORDER BY 1",
            &[],
        )
        .await
        .map_err(|e| MigrationError::db("listing the extensions' configuration tables", e))?;
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for r in rows {
        let (name, ok): (String, bool) = (r.get(0), r.get(1));
        if ok {
            with.push(name);
        } else {
            without.push(name);
        }
    }
    Ok((with, without))
}

/// Source tables that hold rows and are not among `compared` (qualified
/// names): what a verify would otherwise pass over in silence. Every table
/// that can hold user rows counts, whatever the filters say; extensions'
/// own tables count only as far as their `extcondition` selects user rows.
/// Runs in the caller's transaction (its snapshot).
pub async fn tables_with_rows_outside(client: &Client, compared: &[String]) -> Result<Vec<String>> {
    let rows = client
        .query_arrays(
            &format!(
                "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname), {EXTCONDITION_SQL}
                   FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                  WHERE c.relkind = 'r' AND c.relpersistence IN ('p', 'u') AND {USER_SCHEMA_SQL}
                    AND (NOT {EXTENSION_MEMBER_SQL}
                         OR c.oid IN (SELECT pg_catalog.unnest(x.extconfig) FROM pg_catalog.pg_extension x))
                    AND pg_catalog.pg_relation_size(c.oid) > 0
                    AND pg_catalog.format('%I.%I', n.nspname, c.relname)
                        NOT IN (SELECT pg_catalog.unnest($1::text[]))
                  ORDER BY 1"
            ),
            &[&compared],
        )
        .await
        .map_err(|e| MigrationError::db("listing the source's tables", e))?;
    let mut out = Vec::new();
    for r in rows {
        let (name, condition): (String, Option<String>) = (r.get(0), r.get(1));
        // Pages are no proof of rows (deleted rows, a failed load): look.
        let sql = format!(
            "SELECT EXISTS (SELECT 1 FROM ONLY {name} {})",
            condition.unwrap_or_default()
        );
        let has_rows: bool = crate::pg::query_one_once(client, &sql)
            .await
            .map_err(|e| MigrationError::db(format!("looking for rows in {name}"), e))?
            .get(0);
        if has_rows {
            out.push(name);
        }
    }
    Ok(out)
}

/// Unlogged tables of the database, `schema.name` quoted (logical
/// replication cannot carry them: they are copied again under a fence).
pub async fn unlogged_tables(c: &Client) -> Result<Vec<String>> {
    Ok(c.query_typed(
        "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) FROM pg_catalog.pg_class c
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind = 'r' AND c.relpersistence = 'u'",
        &[],
    )
    .await
    .map_err(|e| MigrationError::db("listing unlogged tables", e))?
    .iter()
    .map(|r| r.get(0))
    .collect())
}

/// Extensions' configuration sequences: pg_dump sets their values too.
pub async fn list_extension_config_sequences(client: &Client) -> Result<Vec<SequenceInfo>> {
    let rows = client
        .query_typed(
            "SELECT n.nspname::text, c.relname::text FROM pg_catalog.pg_class c
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind = 'S' AND c.oid IN (SELECT pg_catalog.unnest(x.extconfig) FROM pg_catalog.pg_extension x)
              ORDER BY 1, 2",
            &[],
        )
        .await
        .map_err(|e| MigrationError::db("listing extension configuration sequences", e))?;
    Ok(rows
        .iter()
        .map(|r| SequenceInfo {
            schema: r.get(0),
            name: r.get(1),
        })
        .collect())
}

async fn read_tables(
    client: &Client,
    where_sql: &str,
    filter_sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<TableInfo>> {
    let sql = format!(
        r#"
        SELECT c.oid, n.nspname::text, c.relname::text,
               pg_catalog.pg_relation_size(c.oid) AS bytes,
               c.reltuples::float8,
               (SELECT pg_catalog.array_agg(a.attname::text ORDER BY a.attnum)
                  FROM pg_catalog.pg_attribute a
                 WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                   AND a.attgenerated = '') AS cols,
               (SELECT pg_catalog.array_agg(a.attname::text ORDER BY a.attnum)
                  FROM pg_catalog.pg_attribute a
                 WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) AS allcols,
               (SELECT pg_catalog.array_agg(a.atttypid ORDER BY a.attnum)
                  FROM pg_catalog.pg_attribute a
                 WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                   AND a.attgenerated = '') AS coltypes,
               (SELECT pg_catalog.array_agg(pg_catalog.format_type(a.atttypid, a.atttypmod) ORDER BY a.attnum)
                  FROM pg_catalog.pg_attribute a
                 WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                   AND a.attgenerated = '') AS coltypnames,
               CASE WHEN c.relispartition THEN
                    (SELECT pg_catalog.format('%I.%I', rn.nspname, r.relname)
                       FROM pg_catalog.pg_class r JOIN pg_catalog.pg_namespace rn ON rn.oid = r.relnamespace
                      WHERE r.oid = pg_catalog.pg_partition_root(c.oid)) END AS root,
               {filter_sql} AS row_filter
          FROM pg_catalog.pg_class c
          JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         WHERE {where_sql}
         ORDER BY bytes DESC, n.nspname, c.relname"#
    );
    let types = load_user_types(client).await?;
    let mut out = Vec::new();
    let typed = params
        .iter()
        .map(|p| (*p, tokio_postgres::types::Type::TEXT_ARRAY));
    super::each_row(client, &sql, typed, |r| {
        let coltypes: Vec<u32> = r.get::<_, Option<Vec<u32>>>(7).unwrap_or_default();
        let binary_safe = coltypes.iter().all(|t| binary_safe(*t, &types, 0));
        let names = |i: usize| name_list(&r, i);
        out.push(TableInfo {
            oid: r.get(0),
            schema: r.get(1),
            name: r.get(2),
            bytes: r.get(3),
            row_estimate: r.get(4),
            columns: names(5),
            all_columns: names(6),
            binary_safe,
            partition_root: r.get(9),
            column_types: names(8),
            row_filter: r.get(10),
            load_into: None,
        });
    })
    .await
    .map_err(|e| MigrationError::db("listing tables on the source", e))?;
    out.shrink_to_fit();
    Ok(out)
}

/// The `--schema` and `--table` patterns that match nothing on the source.
/// pg_dump stops on them ("no matching tables were found"): a run that
/// silently copies nothing because of a typo looks like a success.
pub async fn unmatched_patterns(
    client: &Client,
    filters: &crate::config::filter::Filters,
) -> Result<Vec<String>> {
    let compiled = filters.compile()?;
    let mut out = Vec::new();
    for (pattern, re) in filters.schemas.iter().zip(&compiled.schemas) {
        let found: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace n WHERE n.nspname ~ $1)",
                &[re],
            )
            .await
            .map_err(|e| MigrationError::db("matching --schema patterns on the source", e))?
            .get(0);
        if !found {
            out.push(format!("--schema \"{pattern}\""));
        }
    }
    for (pattern, (sre, nre)) in filters.tables.iter().zip(&compiled.tables) {
        let found: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c
                                  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                                 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
                                   AND c.relname ~ $2
                                   AND CASE WHEN $1::text IS NULL THEN pg_catalog.pg_table_is_visible(c.oid)
                                            ELSE n.nspname ~ $1 END)",
                &[sre, nre],
            )
            .await
            .map_err(|e| MigrationError::db("matching --table patterns on the source", e))?
            .get(0);
        if !found {
            out.push(format!("--table \"{pattern}\""));
        }
    }
    Ok(out)
}

/// Which database of which cluster a session is on, however its
/// connection string was spelt: the cluster's system identifier (or, when
/// the role may not read it, the postmaster's start time and port) and the
/// database's oid. Two equal identities are one database.
pub async fn database_identity(client: &Client) -> Result<String> {
    let row = crate::pg::query_one_once(client, "SELECT (SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database())::text,
                    pg_catalog.pg_postmaster_start_time()::text, pg_catalog.current_setting('port')")
        .await
        .map_err(|e| MigrationError::db("reading which database this is", e))?;
    let (db, started, port): (String, String, String) = (row.get(0), row.get(1), row.get(2));
    let system = match crate::pg::query_one_once(
        client,
        "SELECT system_identifier::text FROM pg_catalog.pg_control_system()",
    )
    .await
    {
        Ok(r) => r.get::<_, String>(0),
        Err(_) => format!("started {started} on port {port}"),
    };
    Ok(format!("{system}/{db}"))
}

/// Take ACCESS SHARE locks on the tables, as pg_dump does: concurrent
/// DROP, TRUNCATE or ALTER TABLE then wait for the migration instead of
/// breaking it halfway. Must run inside the snapshot transaction.
pub async fn lock_tables(client: &Client, tables: &[TableInfo]) -> Result<()> {
    for chunk in tables.chunks(500) {
        let names: Vec<String> = chunk.iter().map(|t| t.qualified()).collect();
        client
            .batch_execute(&format!(
                "LOCK TABLE {} IN ACCESS SHARE MODE",
                names.join(", ")
            ))
            .await
            .map_err(|e| MigrationError::db("locking the source tables in ACCESS SHARE mode", e))?;
    }
    Ok(())
}

/// Every relation in scope that a target must have (tables, partitioned
/// tables), as quoted `schema.name`, sorted. Used by verify to compare sets.
pub async fn list_relation_names(
    client: &Client,
    filters: &CompiledFilters,
) -> Result<Vec<String>> {
    let sql = format!(
        r#"SELECT pg_catalog.format('%I.%I', n.nspname, c.relname)
             FROM pg_catalog.pg_class c
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind IN ('r', 'p') AND c.relpersistence IN ('p', 'u') AND {}
            ORDER BY 1"#,
        &*SCOPE_SQL
    );
    let scope = ScopeParams::new(filters);
    let rows = client
        .query_arrays(&sql, &scope.params())
        .await
        .map_err(|e| MigrationError::db("listing relations", e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Sequences in scope: in the included schemas, not owned by an extension;
/// with table filters, those owned by (or named like) an included table;
/// and those a column default of a table in scope calls (`nextval`) without
/// owning them, unless `--exclude-table` or `--exclude-schema` names them
/// (the schema filter brings the same ones along, see `schema::filter`).
pub async fn list_sequences(
    client: &Client,
    filters: &CompiledFilters,
) -> Result<Vec<SequenceInfo>> {
    // A sequence is in scope when it passes the filters itself, or when a
    // table it belongs to (serial / identity) does.
    let sql = format!(
        r#"
        WITH seqs AS (
          SELECT c.oid AS seqoid, n.nspname::text AS nsp, c.relname::text AS rel,
                 NOT (n.nspname ~ ANY ($2::text[])) AND NOT {excluded} AS not_excluded
            FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
           WHERE c.relkind = 'S'
             AND n.nspname NOT IN ('pg_catalog', 'information_schema', '_pg_dbmigrator')
             AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                              WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                                AND d.objid = c.oid AND d.deptype = 'e')
        ), in_scope AS (
          SELECT c.oid FROM pg_catalog.pg_class c
            JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
           WHERE c.relkind IN ('r', 'p', 'S') AND {}
        ), owned AS (
          -- Joined once (a correlated EXISTS per sequence took seconds at
          -- 10,000 sequences).
          SELECT d.objid FROM pg_catalog.pg_depend d JOIN in_scope i ON i.oid = d.refobjid
           WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
             AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
             AND d.deptype IN ('a', 'i')
        ), called AS (
          -- Sequences a default of a table in scope calls.
          SELECT d.refobjid AS objid FROM pg_catalog.pg_depend d
            JOIN pg_catalog.pg_attrdef ad ON ad.oid = d.objid
            JOIN in_scope i ON i.oid = ad.adrelid
           WHERE d.classid = 'pg_catalog.pg_attrdef'::pg_catalog.regclass
             AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
        )
        SELECT nsp, rel FROM seqs
         WHERE seqoid IN (SELECT oid FROM in_scope)
            OR seqoid IN (SELECT objid FROM owned)
            OR (not_excluded AND seqoid IN (SELECT objid FROM called))
         ORDER BY nsp, rel"#,
        &*SCOPE_SQL,
        excluded = matches_patterns(5, 6)
    );
    let scope = ScopeParams::new(filters);
    let rows = client
        .query_arrays(&sql, &scope.params())
        .await
        .map_err(|e| MigrationError::db("listing sequences on the source", e))?;
    Ok(rows
        .iter()
        .map(|r| SequenceInfo {
            schema: r.get(0),
            name: r.get(1),
        })
        .collect())
}

/// A sequence's `(last_value, is_called)`, read from the sequence itself
/// (`pg_sequences` hides the value of a sequence never called).
pub async fn sequence_state(client: &Client, seq: &SequenceInfo) -> Result<(i64, bool)> {
    let sql = format!("SELECT last_value, is_called FROM {}", seq.qualified());
    let row = crate::pg::query_one_once(client, &sql)
        .await
        .map_err(|e| MigrationError::db(format!("reading sequence {}", seq.qualified()), e))?;
    Ok((row.get(0), row.get(1)))
}

/// [`sequence_state`] of many sequences. Every one must exist.
///
/// One query reads every called sequence's value
/// (`pg_sequence_last_value`: 8,000 sequences in about 0.2 s, where the
/// same through `UNION ALL` reads of the relations took 1 s, most of it
/// planning); those it leaves NULL (never called, or reset by `setval(...,
/// false)` or `RESTART`: their value is not in it) are read from the
/// relations, a few hundred per query.
pub async fn sequence_states(client: &Client, seqs: &[SequenceInfo]) -> Result<Vec<(i64, bool)>> {
    let names: Vec<String> = seqs.iter().map(|s| s.qualified()).collect();
    let rows = client
        .query_typed(
            "SELECT pg_catalog.pg_sequence_last_value(x::regclass)
               FROM pg_catalog.unnest($1::text[]) WITH ORDINALITY AS u(x, i) ORDER BY i",
            &[(&names, tokio_postgres::types::Type::TEXT_ARRAY)],
        )
        .await
        .map_err(|e| MigrationError::db("reading the sequences' values", e))?;
    let called: Vec<Option<i64>> = rows.iter().map(|r| r.get(0)).collect();
    let rest: Vec<SequenceInfo> = seqs
        .iter()
        .zip(&called)
        .filter(|(_, v)| v.is_none())
        .map(|(s, _)| s.clone())
        .collect();
    let mut rest = relation_states(client, &rest).await?.into_iter();
    Ok(called
        .into_iter()
        .map(|v| match v {
            Some(v) => (v, true),
            None => rest.next().expect("one state per sequence read"),
        })
        .collect())
}

/// `(last_value, is_called)` read from the sequences' relations, a few
/// hundred per round trip.
async fn relation_states(client: &Client, seqs: &[SequenceInfo]) -> Result<Vec<(i64, bool)>> {
    let mut out = Vec::with_capacity(seqs.len());
    for chunk in seqs.chunks(500) {
        let sql: Vec<String> = chunk
            .iter()
            .enumerate()
            .map(|(i, s)| {
                format!(
                    "SELECT {i} AS i, last_value, is_called FROM {}",
                    s.qualified()
                )
            })
            .collect();
        let sql = format!("{} ORDER BY i", sql.join(" UNION ALL "));
        match client.query_typed(&sql, &[]).await {
            Ok(rows) => out.extend(
                rows.iter()
                    .map(|r| (r.get::<_, i64>(1), r.get::<_, bool>(2))),
            ),
            // One at a time, so the error names the sequence.
            Err(_) => {
                for s in chunk {
                    out.push(sequence_state(client, s).await?);
                }
            }
        }
    }
    Ok(out)
}

/// Which of `names` (quoted `schema.name`) exist, in one query.
pub async fn relations_exist(client: &Client, names: &[String]) -> Result<Vec<bool>> {
    let rows = client
        .query_arrays(
            "SELECT pg_catalog.to_regclass(x) IS NOT NULL FROM pg_catalog.unnest($1::text[]) WITH ORDINALITY AS u(x, i) ORDER BY i",
            &[&names],
        )
        .await
        .map_err(|e| MigrationError::db("looking up relations", e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// All large objects with their owners, by id.
pub async fn list_large_objects(client: &Client) -> Result<Vec<LargeObjectInfo>> {
    let rows = client
        .query_typed(
            "SELECT l.oid, pg_catalog.pg_get_userbyid(l.lomowner)::text, l.lomacl::text,
                    pg_catalog.acldefault('L', l.lomowner)::text,
                    pg_catalog.obj_description(l.oid, 'pg_largeobject')
               FROM pg_catalog.pg_largeobject_metadata l ORDER BY l.oid",
            &[],
        )
        .await
        .map_err(|e| MigrationError::db("listing large objects", e))?;
    Ok(rows
        .iter()
        .map(|r| LargeObjectInfo {
            oid: r.get(0),
            owner: r.get(1),
            acl: r.get(2),
            acl_default: r.get(3),
            comment: r.get(4),
        })
        .collect())
}

/// What we need to know about a user-defined type to decide on binary COPY.
#[derive(Debug, Clone)]
struct UserType {
    typtype: i8,
    basetype: u32,
    category: i8,
    has_binary_io: bool,
    range_subtype: Option<u32>,
    /// The element type of an array (`typelem` where `typsubscript` is
    /// `array_subscript_handler`, or category 'A' before 14).
    element: Option<u32>,
}

async fn load_user_types(client: &Client) -> Result<HashMap<u32, UserType>> {
    let mut out = HashMap::new();
    super::each_row(
        client,
        // Built-in types too: a few have no binary I/O (aclitem, and
        // arrays of it), and COPY BINARY refuses those.
        "SELECT t.oid, t.typtype, t.typbasetype, t.typcategory,
                (t.typsend <> 0 AND t.typreceive <> 0), r.rngsubtype,
                CASE WHEN t.typcategory = 'A' AND t.typelem <> 0 THEN t.typelem END
           FROM pg_catalog.pg_type t
           LEFT JOIN pg_catalog.pg_range r ON r.rngtypid = t.oid
          WHERE t.oid >= 16384 OR t.typcategory = 'A' OR t.typsend = 0 OR t.typreceive = 0",
        std::iter::empty::<(&str, tokio_postgres::types::Type)>(),
        |r| {
            out.insert(
                r.get::<_, u32>(0),
                UserType {
                    typtype: r.get(1),
                    basetype: r.get(2),
                    category: r.get(3),
                    has_binary_io: r.get(4),
                    range_subtype: r.get(5),
                    element: r.get(6),
                },
            );
        },
    )
    .await
    .map_err(|e| MigrationError::db("reading user-defined types", e))?;
    Ok(out)
}

/// Whether values of type `oid` survive a binary COPY between two servers.
/// Binary arrays and composites embed their element/field type OIDs, and
/// user-defined types get different OIDs on the target, so those must go as
/// text. Scalars of user types (enums, domains, ranges over safe subtypes,
/// extension types with send/receive functions) are fine.
fn binary_safe(oid: u32, types: &HashMap<u32, UserType>, depth: u32) -> bool {
    if depth > 16 {
        return false;
    }
    let Some(t) = types.get(&oid) else {
        // Built-in types not listed have binary I/O.
        return oid < FIRST_NORMAL_OID;
    };
    if oid < FIRST_NORMAL_OID {
        // Built-in OIDs are the same on every server; only the I/O
        // functions (of the type or its element) matter.
        return t.has_binary_io && t.element.is_none_or(|e| binary_safe(e, types, depth + 1));
    }
    match t.typtype as u8 {
        b'd' => binary_safe(t.basetype, types, depth + 1),
        b'e' => true,
        b'r' => t
            .range_subtype
            .is_some_and(|s| binary_safe(s, types, depth + 1)),
        b'b' => t.category as u8 != b'A' && t.has_binary_io,
        // composite, multirange, pseudo: text
        _ => false,
    }
}

/// A database's locale provider other than libc, as `CREATE DATABASE`
/// takes it (`LOCALE_PROVIDER`, `ICU_LOCALE` or `BUILTIN_LOCALE`,
/// `ICU_RULES`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DatabaseLocale {
    /// `icu` or `builtin`.
    pub provider: String,
    /// `daticulocale` (15, 16) or `datlocale` (17+).
    pub locale: Option<String>,
    /// `daticurules` (16+).
    #[serde(default)]
    pub rules: Option<String>,
}

/// The current database's locale provider when it is not libc (ICU from
/// 15, builtin from 17), with its locale and (16+) ICU rules.
pub async fn database_locale_provider(
    client: &Client,
    server_version: i32,
) -> Result<Option<DatabaseLocale>> {
    if server_version < 150000 {
        return Ok(None);
    }
    let locale = if server_version >= 170000 {
        "d.datlocale"
    } else {
        "d.daticulocale"
    };
    let rules = if server_version >= 160000 {
        "d.daticurules"
    } else {
        "NULL::text"
    };
    let row = crate::pg::query_one_once(
        client,
        &format!(
            "SELECT d.datlocprovider::text, {locale}::text, {rules}::text
                   FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database()"
        ),
    )
    .await
    .map_err(|e| MigrationError::db("reading the source database's locale provider", e))?;
    let provider: String = row.get(0);
    Ok(match provider.as_str() {
        "i" => Some("icu"),
        "b" => Some("builtin"),
        _ => None,
    }
    .map(|p| DatabaseLocale {
        provider: p.to_string(),
        locale: row.get(1),
        rules: row.get(2),
    }))
}

/// The databases a whole-cluster migration considers: every one that
/// allows connections, `template0` left out, with its size (0 where this
/// role may not connect: the migration of that one then says so) and
/// whether one of the `excluded` regexes (`--exclude-database`) matches it.
pub async fn cluster_databases(
    client: &Client,
    excluded: &[String],
) -> Result<Vec<(String, i64, bool)>> {
    let rows = client
        .query_arrays(
            "SELECT d.datname::text,
                    CASE WHEN pg_catalog.has_database_privilege(d.oid, 'CONNECT')
                         THEN pg_catalog.pg_database_size(d.oid) ELSE 0 END,
                    d.datname ~ ANY ($1::text[])
               FROM pg_catalog.pg_database d
              WHERE d.datallowconn AND d.datname <> 'template0'
              ORDER BY 1",
            &[&excluded],
        )
        .await
        .map_err(|e| MigrationError::db("listing the source's databases", e))?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// `server_version_num` of a session (e.g. 150004).
pub async fn server_version_num(client: &Client) -> Result<i32> {
    let row = crate::pg::query_one_once(
        client,
        "SELECT pg_catalog.current_setting('server_version_num')::int4",
    )
    .await
    .map_err(|e| MigrationError::db("reading server_version_num", e))?;
    Ok(row.get(0))
}

/// The connected database's default tablespace.
pub async fn database_tablespace(client: &Client) -> Result<String> {
    let row = crate::pg::query_one_once(
        client,
        "SELECT t.spcname::text FROM pg_catalog.pg_database d
               JOIN pg_catalog.pg_tablespace t ON t.oid = d.dattablespace
              WHERE d.datname = pg_catalog.current_database()",
    )
    .await
    .map_err(|e| MigrationError::db("reading the database's default tablespace", e))?;
    Ok(row.get(0))
}

/// The server's shared lock table: `(slots, max_locks_per_transaction,
/// server processes)`. PostgreSQL sizes it as max_locks_per_transaction
/// objects per server process or prepared transaction, shared by all.
pub async fn lock_table_size(client: &Client) -> Result<(i64, i64, i64)> {
    let row = crate::pg::query_one_once(client, "SELECT current_setting('max_locks_per_transaction')::int8,
                    current_setting('max_connections')::int8 + current_setting('max_prepared_transactions')::int8
                    + current_setting('autovacuum_max_workers')::int8 + current_setting('max_worker_processes')::int8
                    + current_setting('max_wal_senders')::int8 + 1")
        .await
        .map_err(|e| MigrationError::db("reading the lock table's size", e))?;
    let (per, procs): (i64, i64) = (row.get(0), row.get(1));
    Ok((per * procs, per, procs))
}

/// The server's heap page size, for turning table sizes into page ranges.
pub async fn block_size(client: &Client) -> Result<u64> {
    let row = crate::pg::query_one_once(
        client,
        "SELECT pg_catalog.current_setting('block_size')::int8",
    )
    .await
    .map_err(|e| MigrationError::db("reading block_size", e))?;
    Ok(row.get::<_, i64>(0) as u64)
}
