//! Security labels (`SECURITY LABEL FOR provider ON ... IS ...`), as pg_dump
//! emits them after each object's comment. `pg_seclabels` names every
//! labelled object in the syntax the statement takes (functions and
//! aggregates with their identity arguments, columns as `table.column`).
//!
//! Labels on large objects, roles, tablespaces and the database are not
//! carried (their statements would name objects outside the schema). Reads
//! only; `--no-security-labels` skips this loader.

use super::pipeline::Catalog;

use super::query;
use crate::error::Result;
use crate::pg::quote::{ident, literal};
use crate::schema::model::SchemaModel;

/// The statement for one label.
fn statement(provider: &str, objtype: &str, objname: &str, label: &str) -> String {
    format!(
        "SECURITY LABEL FOR {} ON {} {objname} IS {};",
        ident(provider),
        objtype.to_uppercase(),
        literal(label)
    )
}

pub(super) async fn load_security_labels(c: &Catalog<'_>, m: &mut SchemaModel) -> Result<()> {
    let rows = query(
        c,
        "security labels",
        "SELECT l.classoid, l.objoid, l.objtype, l.objname, l.provider::text, l.label
           FROM pg_catalog.pg_seclabels l
          WHERE l.objtype NOT IN ('large object', 'role', 'tablespace', 'database')
          ORDER BY l.classoid, l.objoid, l.objsubid, l.provider",
    )
    .await?;
    for r in rows {
        let (classoid, objoid): (u32, u32) = (r.get(0), r.get(1));
        let (objtype, objname, provider, label): (String, String, String, String) =
            (r.get(2), r.get(3), r.get(4), r.get(5));
        // Objects outside the model (built-ins, extension members) keep
        // whatever their creator gives them.
        if let Some(&i) = m.by_ref.get(&(classoid, objoid)) {
            m.objects[i]
                .comments
                .push(statement(&provider, &objtype, &objname, &label));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_name_the_provider_and_quote_the_label() {
        assert_eq!(
            statement("selinux", "materialized view", "public.mv", "system_u:object_r:sepgsql_table_t:s0"),
            "SECURITY LABEL FOR selinux ON MATERIALIZED VIEW public.mv IS 'system_u:object_r:sepgsql_table_t:s0';"
        );
        assert_eq!(
            statement("Dummy", "column", "public.t.\"A\"", "it's"),
            "SECURITY LABEL FOR \"Dummy\" ON COLUMN public.t.\"A\" IS 'it''s';"
        );
    }
}
