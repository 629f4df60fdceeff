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

// TEMPORARY until the pattern compiler lands.
use crate::error::Result;
#[derive(Debug, Clone, Default)]
pub struct CompiledFilters {
    pub schemas: Vec<String>,
    pub exclude_schemas: Vec<String>,
    pub tables: Vec<(Option<String>, String)>,
    pub exclude_tables: Vec<(Option<String>, String)>,
}
impl Filters {
    pub fn normalized(&self) -> Filters {
        self.clone()
    }
    pub fn compile(&self) -> Result<CompiledFilters> {
        Ok(CompiledFilters::default())
    }
}
