//! The datasets, built on the source server: pgbench's, a many-table set
//! and a schema-per-tenant set generated with SQL (deterministic: every
//! value is a fixed formula of the row number, no random()).

use std::process::Command;

use anyhow::{bail, Result};

use super::util::{exec, run_parallel, run_quiet};
use super::Ctx;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dataset {
    /// `pgbench -i -s <scale>`.
    Pgbench,
    /// The many-table set at this multiple of its base size.
    Many(u32),
    /// This many tenant schemas of [`TENANT_TABLES`] small tables each.
    Tenants(u32),
}

impl Dataset {
    pub fn parse(s: &str) -> Result<Dataset> {
        let s = s.trim();
        if s == "pgbench" {
            return Ok(Dataset::Pgbench);
        }
        if let Some(k) = s.strip_prefix("many").and_then(|k| k.parse::<u32>().ok()) {
            if k >= 1 {
                return Ok(Dataset::Many(k));
            }
        }
        if let Some(n) = s
            .strip_prefix("tenants")
            .and_then(|n| n.parse::<u32>().ok())
        {
            // Five digits in the schema names.
            if (1..=99_999).contains(&n) {
                return Ok(Dataset::Tenants(n));
            }
        }
        bail!(
            "unknown dataset {s:?}: expected pgbench, many<k> (many1, many3, many10, ...) \
             or tenants<n> (tenants500, tenants2000, ...)"
        )
    }

    pub fn name(self) -> String {
        match self {
            Dataset::Pgbench => "pgbench".into(),
            Dataset::Many(k) => format!("many{k}"),
            Dataset::Tenants(n) => format!("tenants{n}"),
        }
    }

    /// Source database name.
    pub fn db(self) -> String {
        format!("bench_{}", self.name())
    }

    /// Rough size on disk, for the free-space check before building it.
    pub fn estimated_bytes(self, pgbench_scale: u32) -> u64 {
        match self {
            Dataset::Pgbench => pgbench_scale as u64 * 16 * 1024 * 1024,
            Dataset::Many(k) => k as u64 * 135 * 1024 * 1024,
            Dataset::Tenants(n) => n as u64 * TENANT_BYTES,
        }
    }

    pub fn describe(self, pgbench_scale: u32) -> String {
        match self {
            Dataset::Pgbench => format!(
                "`pgbench -i -s {pgbench_scale}`: 4 tables, pgbench_accounts ({} rows) dominates; primary keys, no foreign keys",
                pgbench_scale as u64 * 100_000
            ),
            Dataset::Many(k) => format!(
                "{MANY_TABLES} tables ×{k} (Zipf-like sizes, {} rows in all): text, jsonb, numeric, timestamptz, float, bool; \
                 {} primary keys, {} unique constraints, {} secondary indexes (btree, a few GIN), {} foreign keys, identity sequences",
                many_tables(k).iter().map(|t| t.rows).sum::<i64>(),
                MANY_TABLES,
                many_tables(k).iter().filter(|t| t.shape == 3).count(),
                many_tables(k).iter().map(|t| t.secondary_indexes()).sum::<usize>(),
                many_tables(k).iter().filter(|t| t.parent.is_some()).count(),
            ),
            Dataset::Tenants(n) => format!(
                "{n} tenant schemas (t00001 ..) of {TENANT_TABLES} tables each, {} tables in all: \
                 customers ({TENANT_CUSTOMERS} rows), products ({TENANT_PRODUCTS}), orders ({TENANT_ORDERS}), \
                 order_items ({TENANT_ITEMS}), audit ({TENANT_ORDERS}, written by the trigger); per schema \
                 4 identity sequences, 8 indexes (5 primary keys, 2 unique, 1 on orders (customer_id, created_at)), \
                 3 foreign keys, a plpgsql trigger function and an AFTER INSERT trigger on orders",
                n as u64 * TENANT_TABLES
            ),
        }
    }
}

/// Build `ds` on the source (into a fresh database `ds.db()`), then
/// VACUUM (FREEZE, ANALYZE) and CHECKPOINT, so no timed run pays for hint
/// bits or the load's dirty buffers.
pub fn build(ctx: &Ctx, ds: Dataset) -> Result<()> {
    let db = ds.db();
    let admin = ctx.src.conninfo("postgres");
    exec(
        &admin,
        &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
    )?;
    exec(&admin, &format!("CREATE DATABASE {db}"))?;
    let ci = ctx.src.conninfo(&db);
    match ds {
        Dataset::Pgbench => {
            let mut cmd = Command::new(ctx.src.bin_dir.join("pgbench"));
            cmd.args(["-i", "-q", "-s", &ctx.cfg.pgbench_scale.to_string()])
                .args(["-h", &ctx.src.host, "-p", &ctx.src.port.to_string()])
                .args(["-U", &ctx.src.superuser, &db])
                .env("PGPASSWORD", &ctx.src.password);
            run_quiet(&mut cmd, "pgbench -i")?;
        }
        Dataset::Many(k) => build_many(&ci, k)?,
        Dataset::Tenants(n) => build_tenants(&ci, n)?,
    }
    // The freeze vacuum of a fresh load is single-threaded; run it per table
    // on two sessions.
    let tables = super::verify::table_list(&ci)?;
    let vac: Vec<String> = tables
        .iter()
        .map(|t| format!("VACUUM (FREEZE, ANALYZE) {}", t.qualified()))
        .collect();
    run_parallel(&ci, vac, 2)?;
    exec(&admin, "CHECKPOINT")?;
    Ok(())
}

pub const MANY_TABLES: usize = 40;
/// Rows of the largest table at ×1; table i has BASE·k / i^1.2 rows.
const MANY_BASE_ROWS: f64 = 220_000.0;
const ZIPF_S: f64 = 1.2;

/// One table of the many-table set.
#[derive(Debug, Clone)]
pub struct ManyTable {
    pub i: usize,
    /// 0 orders-like, 1 documents (text + jsonb), 2 measurements, 3 dimension.
    pub shape: usize,
    pub rows: i64,
    /// Index (1-based) of the dimension table `customer_id` references.
    pub parent: Option<usize>,
}

impl ManyTable {
    pub fn schema(&self) -> &'static str {
        if self.shape == 2 {
            "metrics"
        } else {
            "public"
        }
    }
    pub fn name(&self) -> String {
        format!("{}.t{:02}", self.schema(), self.i)
    }
    fn secondary_indexes(&self) -> usize {
        match self.shape {
            0 => 2,
            1 => 1 + usize::from(self.i >= 10),
            2 => 1,
            _ => 0,
        }
    }
}

pub fn many_tables(k: u32) -> Vec<ManyTable> {
    let rows = |i: usize| ((MANY_BASE_ROWS * k as f64) / (i as f64).powf(ZIPF_S)).round() as i64;
    (1..=MANY_TABLES)
        .map(|i| {
            let shape = (i - 1) % 4;
            // A few foreign keys, the biggest table's included: orders-like
            // tables 1, 5, 9, 13, 17 reference the dimension table after them.
            let parent = (shape == 0 && i <= 17).then_some(i + 3);
            ManyTable {
                i,
                shape,
                rows: rows(i).max(1),
                parent,
            }
        })
        .collect()
}

fn build_many(ci: &str, k: u32) -> Result<()> {
    let tables = many_tables(k);
    let rows_of = |i: usize| tables[i - 1].rows;
    let mut ddl = String::from("CREATE SCHEMA metrics;\n");
    let mut loads = Vec::new();
    let mut indexes = Vec::new();
    let mut fks = Vec::new();
    for t in &tables {
        let n = t.name();
        let r = t.rows;
        let short = format!("t{:02}", t.i);
        match t.shape {
            0 => {
                let p = t.parent.map(rows_of).unwrap_or(100_000);
                ddl += &format!(
                    "CREATE TABLE {n} (id bigint NOT NULL, customer_id integer NOT NULL, \
                     created_at timestamptz NOT NULL, status text NOT NULL, \
                     amount numeric(12,2) NOT NULL, note text);\n"
                );
                loads.push(format!(
                    "INSERT INTO {n} SELECT g, 1 + (g * 7919) % {p}, \
                     timestamptz '2020-01-01 00:00:00+00' + ((g * 7919) % 94608000) * interval '1 second', \
                     (ARRAY['new','paid','shipped','cancelled','returned'])[1 + (g % 5)::int], \
                     ((g * 104729) % 10000000) / 100.0, \
                     CASE WHEN g % 3 = 0 THEN NULL ELSE 'note ' || md5(g::text) END \
                     FROM generate_series(1::bigint, {r}) g"
                ));
                indexes.push(format!("ALTER TABLE {n} ADD PRIMARY KEY (id)"));
                indexes.push(format!(
                    "CREATE INDEX {short}_customer_idx ON {n} (customer_id)"
                ));
                indexes.push(format!(
                    "CREATE INDEX {short}_created_idx ON {n} (created_at)"
                ));
                if let Some(p) = t.parent {
                    fks.push(format!(
                        "ALTER TABLE {n} ADD CONSTRAINT {short}_customer_fk \
                         FOREIGN KEY (customer_id) REFERENCES public.t{p:02} (id)"
                    ));
                }
            }
            1 => {
                ddl += &format!(
                    "CREATE TABLE {n} (id integer NOT NULL, title text NOT NULL, body text, \
                     attrs jsonb NOT NULL, updated_at timestamptz NOT NULL);\n"
                );
                loads.push(format!(
                    "INSERT INTO {n} SELECT g, 'title ' || substr(md5(g::text), 1, 16), \
                     repeat(md5((g * 3)::text), 1 + (g % 6)::int), \
                     jsonb_build_object('kind', (ARRAY['a','b','c','d'])[1 + (g % 4)::int], \
                       'n', g % 1000, 'ok', g % 2 = 0, \
                       'tags', jsonb_build_array('x' || g % 17, 'y' || g % 23)), \
                     timestamptz '2021-06-01 00:00:00+00' + g * interval '17 seconds' \
                     FROM generate_series(1, {r}) g"
                ));
                indexes.push(format!("ALTER TABLE {n} ADD PRIMARY KEY (id)"));
                indexes.push(format!("CREATE INDEX {short}_title_idx ON {n} (title)"));
                if t.i >= 10 {
                    indexes.push(format!(
                        "CREATE INDEX {short}_attrs_gin ON {n} USING gin (attrs jsonb_path_ops)"
                    ));
                }
            }
            2 => {
                ddl += &format!(
                    "CREATE TABLE {n} (id bigint NOT NULL, sensor_id integer NOT NULL, \
                     ts timestamptz NOT NULL, v1 double precision, v2 numeric(10,4), \
                     v3 integer, ok boolean NOT NULL);\n"
                );
                loads.push(format!(
                    "INSERT INTO {n} SELECT g, (g % 500)::int, \
                     timestamptz '2022-01-01 00:00:00+00' + g * interval '1 second', \
                     sin(g::float8) * 100, ((g * 7) % 1000000) / 10000.0, \
                     ((g * 31) % 1000)::int, g % 7 <> 0 \
                     FROM generate_series(1::bigint, {r}) g"
                ));
                indexes.push(format!("ALTER TABLE {n} ADD PRIMARY KEY (id)"));
                indexes.push(format!(
                    "CREATE INDEX {short}_sensor_ts_idx ON {n} (sensor_id, ts)"
                ));
            }
            _ => {
                ddl += &format!(
                    "CREATE TABLE {n} (id integer GENERATED BY DEFAULT AS IDENTITY, \
                     code text NOT NULL, name text NOT NULL, \
                     price numeric(10,2) NOT NULL CHECK (price >= 0), meta jsonb);\n"
                );
                loads.push(format!(
                    "INSERT INTO {n} SELECT g, 'C' || lpad(g::text, 10, '0'), 'name ' || md5(g::text), \
                     ((g * 13) % 100000) / 100.0, \
                     CASE WHEN g % 4 = 0 THEN NULL ELSE jsonb_build_object(\
                       'color', (ARRAY['red','green','blue'])[1 + (g % 3)::int], 'size', g % 10) END \
                     FROM generate_series(1, {r}) g; \
                     SELECT setval(pg_get_serial_sequence('{n}', 'id'), {r})"
                ));
                indexes.push(format!("ALTER TABLE {n} ADD PRIMARY KEY (id)"));
                indexes.push(format!(
                    "ALTER TABLE {n} ADD CONSTRAINT {short}_code_key UNIQUE (code)"
                ));
            }
        }
    }
    exec(ci, &ddl)?;
    // Largest first on two sessions; the index builds likewise, then the
    // foreign keys once their referenced keys exist.
    run_parallel(ci, loads, 2)?;
    run_parallel(ci, indexes, 2)?;
    run_parallel(ci, fks, 2)?;
    Ok(())
}

/// Tables per tenant schema.
pub const TENANT_TABLES: u64 = 5;
const TENANT_CUSTOMERS: u32 = 20;
const TENANT_PRODUCTS: u32 = 10;
const TENANT_ORDERS: u32 = 50;
/// Two products per order.
const TENANT_ITEMS: u32 = 2 * TENANT_ORDERS;
/// On disk per tenant: its tables, indexes, sequences and TOAST tables are
/// a page or two each, plus its catalog rows (measured on PostgreSQL 15:
/// tenants500 is 244 MB, an empty database 7.5 MB).
const TENANT_BYTES: u64 = 500 * 1024;
/// Tenants per statement batch: one transaction each, holding a lock on
/// every relation it creates (about 25 per tenant).
const TENANTS_PER_BATCH: u32 = 25;

/// One tenant's schema and rows, the way a schema-per-tenant SaaS lays them
/// out: everything qualified, because restores run with an empty
/// search_path and the trigger function's body is only resolved when it
/// fires.
fn tenant_sql(i: u32) -> String {
    let s = format!("t{i:05}");
    format!(
        "CREATE SCHEMA {s};
CREATE TABLE {s}.customers (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
  name text NOT NULL, email text NOT NULL UNIQUE);
CREATE TABLE {s}.products (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
  sku text NOT NULL UNIQUE, price numeric(10,2) NOT NULL);
CREATE TABLE {s}.orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
  customer_id bigint NOT NULL REFERENCES {s}.customers, created_at timestamptz NOT NULL, note text);
CREATE INDEX orders_customer_created_idx ON {s}.orders (customer_id, created_at);
CREATE TABLE {s}.order_items (order_id bigint NOT NULL REFERENCES {s}.orders, \
  product_id bigint NOT NULL REFERENCES {s}.products, qty integer NOT NULL, \
  PRIMARY KEY (order_id, product_id));
CREATE TABLE {s}.audit (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
  at timestamptz NOT NULL, what text NOT NULL);
CREATE FUNCTION {s}.orders_audit() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
  INSERT INTO {s}.audit (at, what)
  VALUES (NEW.created_at, 'order ' || NEW.id || ' by customer ' || NEW.customer_id);
  RETURN NEW;
END $f$;
CREATE TRIGGER orders_audit AFTER INSERT ON {s}.orders
  FOR EACH ROW EXECUTE FUNCTION {s}.orders_audit();
INSERT INTO {s}.customers (name, email)
  SELECT 'customer ' || g, 'c' || g || '@{s}.example.com' FROM generate_series(1, {TENANT_CUSTOMERS}) g;
INSERT INTO {s}.products (sku, price)
  SELECT 'SKU-' || lpad(g::text, 5, '0'), ((g * 1999 + {i}) % 100000) / 100.0
  FROM generate_series(1, {TENANT_PRODUCTS}) g;
INSERT INTO {s}.orders (customer_id, created_at, note)
  SELECT 1 + (g * 7 + {i}) % {TENANT_CUSTOMERS}, \
    timestamptz '2024-01-01 00:00:00+00' + (g * 4021 + {i}) * interval '1 minute', \
    CASE WHEN g % 4 = 0 THEN NULL ELSE 'order note ' || g END
  FROM generate_series(1, {TENANT_ORDERS}) g;
INSERT INTO {s}.order_items (order_id, product_id, qty)
  SELECT 1 + (g - 1) / 2, 1 + ((g - 1) / 2 * 3 + (g - 1) % 2 * 5) % {TENANT_PRODUCTS}, 1 + g % 5
  FROM generate_series(1, {TENANT_ITEMS}) g;
"
    )
}

/// The tenants in batches of [`TENANTS_PER_BATCH`] on two sessions: the
/// build is catalog work, a few ms per tenant, so round trips and one
/// session's commit rate would dominate otherwise.
fn build_tenants(ci: &str, n: u32) -> Result<()> {
    let batches: Vec<String> = (1..=n)
        .collect::<Vec<_>>()
        .chunks(TENANTS_PER_BATCH as usize)
        .map(|c| c.iter().map(|&i| tenant_sql(i)).collect())
        .collect();
    run_parallel(ci, batches, 2)?;
    Ok(())
}
