//! Loose correctness check of a run: every source table exists on the
//! target with the same row count, index count and constraint count.

use std::collections::BTreeMap;

use anyhow::{bail, Context as _, Result};

use super::util::{block, connect, ident, query};

#[derive(Debug, Clone)]
pub struct Table {
    pub schema: String,
    pub name: String,
}

impl Table {
    pub fn qualified(&self) -> String {
        format!("{}.{}", ident(&self.schema), ident(&self.name))
    }
}

const USER_TABLES: &str = "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
     AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'";

/// User tables, largest first (the order the floor's sessions take them in).
pub fn table_list(ci: &str) -> Result<Vec<Table>> {
    let rows = query(
        ci,
        &format!(
            "SELECT n.nspname::text, c.relname::text {USER_TABLES} \
             ORDER BY pg_relation_size(c.oid) DESC, 1, 2"
        ),
    )?;
    Ok(rows
        .into_iter()
        .map(|r| Table {
            schema: r[0].clone().unwrap_or_default(),
            name: r[1].clone().unwrap_or_default(),
        })
        .collect())
}

/// (rows, indexes, constraints) of one table.
pub type Shape = (i64, i64, i64);

/// What a database holds, table by table.
pub type Snapshot = BTreeMap<String, Shape>;

/// Index and constraint counts of every user table, plus the row counts of
/// `tables` (one query; a missing table is simply absent from the result).
pub fn snapshot(ci: &str, tables: &[Table]) -> Result<Snapshot> {
    let meta = query(
        ci,
        &format!(
            "SELECT n.nspname::text, c.relname::text, \
               (SELECT count(*) FROM pg_index i WHERE i.indrelid = c.oid)::text, \
               (SELECT count(*) FROM pg_constraint k WHERE k.conrelid = c.oid)::text \
             {USER_TABLES}"
        ),
    )?;
    let mut present = BTreeMap::new();
    for r in meta {
        let key = format!(
            "{}.{}",
            r[0].as_deref().unwrap_or(""),
            r[1].as_deref().unwrap_or("")
        );
        let num = |v: &Option<String>| v.as_deref().and_then(|s| s.parse().ok()).unwrap_or(0);
        present.insert(key, (num(&r[2]), num(&r[3])));
    }
    let wanted: Vec<&Table> = tables
        .iter()
        .filter(|t| present.contains_key(&format!("{}.{}", t.schema, t.name)))
        .collect();
    let mut snap = Snapshot::new();
    // One UNION ALL per 50 tables keeps the statements short; one session
    // for all of them, as a connection costs more than a chunk of small
    // tables (tens of thousands of tables in the tenants sets).
    block(async {
        let c = connect(ci).await?;
        for chunk in wanted.chunks(50) {
            let sql = chunk
                .iter()
                .enumerate()
                .map(|(k, t)| format!("SELECT {k}, count(*)::text FROM {}", t.qualified()))
                .collect::<Vec<_>>()
                .join(" UNION ALL ");
            let rows = c
                .query(&format!("SELECT k::text, c FROM ({sql}) AS x(k, c)"), &[])
                .await
                .context("counting rows")?;
            for r in rows {
                let k: usize = r
                    .get::<_, Option<String>>(0)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let t = chunk[k];
                let key = format!("{}.{}", t.schema, t.name);
                let rows = r
                    .get::<_, Option<String>>(1)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(-1);
                let (idx, con) = present[&key];
                snap.insert(key, (rows, idx, con));
            }
        }
        Ok::<(), anyhow::Error>(())
    })?;
    Ok(snap)
}

/// Fails with the first few differences between `want` and `got`.
pub fn compare(want: &Snapshot, got: &Snapshot) -> Result<()> {
    let mut diffs = Vec::new();
    for (t, w) in want {
        match got.get(t) {
            None => diffs.push(format!("{t}: missing")),
            Some(g) if g != w => diffs.push(format!(
                "{t}: rows/indexes/constraints {}/{}/{} on the target, {}/{}/{} on the source",
                g.0, g.1, g.2, w.0, w.1, w.2
            )),
            Some(_) => {}
        }
    }
    if !diffs.is_empty() {
        let n = diffs.len();
        diffs.truncate(5);
        bail!(
            "target differs from source in {n} table(s): {}",
            diffs.join("; ")
        );
    }
    Ok(())
}
