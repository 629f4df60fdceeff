//! Which tables a migration covers: pg_dump-style name patterns.
//! (Being written.)

/// Include/exclude patterns, with pg_dump's syntax (`*`, `?`, `"quoted"`, `schema.table`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Filters {
    /// `--schema`: only these schemas (empty: all).
    pub schemas: Vec<String>,
    /// `--exclude-schema`.
    pub exclude_schemas: Vec<String>,
    /// `--table`: only these tables (empty: all).
    pub tables: Vec<String>,
    /// `--exclude-table`.
    pub exclude_tables: Vec<String>,
}
