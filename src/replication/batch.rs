//! Changes held back within one target transaction so they can be applied
//! set-wise: runs of inserts as one COPY, runs of key updates as one
//! `UPDATE ... FROM unnest(...)` (the last change of each row wins), runs of
//! key deletes as one `DELETE ... USING unnest(...)`.
//!
//! Why this is sound: the target session runs with
//! `session_replication_role = replica`, so no foreign key check or
//! ordinary trigger ties one table to another, and the whole batch commits
//! at once: the order *between* tables inside a target transaction cannot
//! be observed. The order *within* a table is kept: each table's changes
//! are cut into segments of one kind (and one column set), applied in
//! order. Tables with triggers that fire on a replica, REPLICA IDENTITY
//! FULL, key-changing updates and TRUNCATE go one statement at a time, after
//! everything held back (see `Applier`). A set statement can still fail
//! where single statements would not (two rows swapping a unique value in
//! one UPDATE): the applier then replays that stretch one statement at a
//! time.

use std::collections::HashMap;

use bytes::{BufMut, Bytes, BytesMut};

/// A column value as pgoutput sent it (text), or NULL.
pub type Val = Option<Bytes>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegKind {
    Insert,
    /// Columns SET (a mask over the relation's columns).
    Update(Vec<bool>),
    Delete,
}

/// Consecutive changes of one kind on one table.
#[derive(Debug)]
pub struct Segment {
    pub kind: SegKind,
    /// Insert: every column. Update: the SET values, then the key values.
    /// Delete: the key values.
    pub rows: Vec<Vec<Val>>,
    /// Updates: key values → row index (the last change of a row wins).
    index: HashMap<Vec<Val>, usize>,
    /// Updates: how many leading values of a row are SET values.
    pub nset: usize,
}

/// Everything held back in the open target transaction, per relation.
#[derive(Debug, Default)]
pub struct Pending {
    tables: HashMap<u32, Vec<Segment>>,
    /// Relations in the order they were first touched (flushed in this
    /// order, so runs are repeatable).
    order: Vec<u32>,
    pub rows: usize,
    pub bytes: usize,
}

fn size(vals: &[Val]) -> usize {
    vals.iter()
        .map(|v| v.as_ref().map_or(0, |b| b.len()) + 8)
        .sum()
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    fn segment(&mut self, oid: u32, kind: SegKind, nset: usize) -> &mut Segment {
        let segs = self.tables.entry(oid).or_insert_with(|| {
            self.order.push(oid);
            Vec::new()
        });
        if segs.last().is_none_or(|s| s.kind != kind) {
            segs.push(Segment {
                kind,
                rows: Vec::new(),
                index: HashMap::new(),
                nset,
            });
        }
        segs.last_mut().expect("just pushed")
    }

    pub fn insert(&mut self, oid: u32, row: Vec<Val>) {
        self.bytes += size(&row);
        self.rows += 1;
        self.segment(oid, SegKind::Insert, 0).rows.push(row);
    }

    pub fn update(&mut self, oid: u32, mask: Vec<bool>, set: Vec<Val>, key: Vec<Val>) {
        self.bytes += size(&set) + size(&key);
        let nset = set.len();
        let seg = self.segment(oid, SegKind::Update(mask), nset);
        let mut row = set;
        row.extend(key.iter().cloned());
        match seg.index.get(&key) {
            Some(&i) => seg.rows[i] = row,
            None => {
                seg.index.insert(key, seg.rows.len());
                seg.rows.push(row);
                self.rows += 1;
            }
        }
    }

    pub fn delete(&mut self, oid: u32, key: Vec<Val>) {
        self.bytes += size(&key);
        self.rows += 1;
        self.segment(oid, SegKind::Delete, 0).rows.push(key);
    }

    pub fn has(&self, oid: u32) -> bool {
        self.tables.contains_key(&oid)
    }

    /// Take what is held for one relation.
    pub fn take_table(&mut self, oid: u32) -> Option<Vec<Segment>> {
        let segs = self.tables.remove(&oid)?;
        self.order.retain(|o| *o != oid);
        for seg in &segs {
            self.rows -= seg.rows.len();
            self.bytes = self
                .bytes
                .saturating_sub(seg.rows.iter().map(|r| size(r)).sum::<usize>());
        }
        Some(segs)
    }

    /// Take everything, in first-touched order of the relations.
    pub fn take(&mut self) -> Vec<(u32, Vec<Segment>)> {
        let mut tables = std::mem::take(&mut self.tables);
        let order = std::mem::take(&mut self.order);
        self.rows = 0;
        self.bytes = 0;
        order
            .into_iter()
            .filter_map(|o| tables.remove(&o).map(|s| (o, s)))
            .collect()
    }
}

/// One row of COPY text format: values escaped, `\N` for NULL.
pub fn copy_text_row(out: &mut BytesMut, row: &[Val]) {
    for (i, v) in row.iter().enumerate() {
        if i > 0 {
            out.put_u8(b'\t');
        }
        match v {
            None => out.put_slice(b"\\N"),
            Some(b) => {
                for &c in b.iter() {
                    match c {
                        b'\\' => out.put_slice(b"\\\\"),
                        b'\t' => out.put_slice(b"\\t"),
                        b'\n' => out.put_slice(b"\\n"),
                        b'\r' => out.put_slice(b"\\r"),
                        c => out.put_u8(c),
                    }
                }
            }
        }
    }
    out.put_u8(b'\n');
}

/// `(SELECT u.p1::type1 AS p1, ... FROM ROWS FROM (unnest($1::text[]), ...) AS u(p1, ...)) AS v`
fn unnest_source(types: &[&str], offset: usize) -> String {
    let n = types.len();
    let casts: Vec<String> = types
        .iter()
        .enumerate()
        .map(|(i, t)| format!("u.p{}::{t} AS p{}", i + 1, i + 1))
        .collect();
    // ROWS FROM: the multi-argument unnest is special syntax only when
    // written unqualified.
    let params: Vec<String> = (1..=n)
        .map(|i| format!("pg_catalog.unnest(${}::text[])", offset + i))
        .collect();
    let names: Vec<String> = (1..=n).map(|i| format!("p{i}")).collect();
    format!(
        "(SELECT {} FROM ROWS FROM ({}) AS u({})) AS v",
        casts.join(", "),
        params.join(", "),
        names.join(", ")
    )
}

/// Set-wise UPDATE: `set` and `key` are (quoted column, type) pairs; the
/// parameters are one text array per SET column, then per key column.
pub fn update_sql(table: &str, set: &[(&str, &str)], key: &[(&str, &str)]) -> String {
    let types: Vec<&str> = set.iter().chain(key).map(|(_, t)| *t).collect();
    let assigns: Vec<String> = set
        .iter()
        .enumerate()
        .map(|(i, (c, _))| format!("{c} = v.p{}", i + 1))
        .collect();
    let conds: Vec<String> = key
        .iter()
        .enumerate()
        .map(|(i, (c, _))| format!("t.{c} = v.p{}", set.len() + i + 1))
        .collect();
    format!(
        "UPDATE ONLY {table} AS t SET {} FROM {} WHERE {}",
        assigns.join(", "),
        unnest_source(&types, 0),
        conds.join(" AND ")
    )
}

/// Set-wise DELETE by key: one text array parameter per key column.
pub fn delete_sql(table: &str, key: &[(&str, &str)]) -> String {
    let types: Vec<&str> = key.iter().map(|(_, t)| *t).collect();
    let conds: Vec<String> = key
        .iter()
        .enumerate()
        .map(|(i, (c, _))| format!("t.{c} = v.p{}", i + 1))
        .collect();
    format!(
        "DELETE FROM ONLY {table} AS t USING {} WHERE {}",
        unnest_source(&types, 0),
        conds.join(" AND ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Val {
        Some(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn segments_keep_the_order_within_a_table_and_the_last_update_wins() {
        let mut p = Pending::default();
        p.insert(7, vec![b("1"), b("a")]);
        p.insert(7, vec![b("2"), b("b")]);
        p.update(9, vec![false, true], vec![b("x")], vec![b("1")]);
        p.update(7, vec![false, true], vec![b("c")], vec![b("1")]);
        p.update(7, vec![false, true], vec![b("d")], vec![b("1")]);
        p.update(7, vec![false, true], vec![b("e")], vec![b("2")]);
        p.delete(7, vec![b("2")]);
        p.insert(7, vec![b("2"), b("f")]);
        assert_eq!(p.rows, 7);
        let t = p.take();
        assert!(p.is_empty());
        assert_eq!(t.iter().map(|(o, _)| *o).collect::<Vec<_>>(), vec![7, 9]);
        let segs = &t[0].1;
        let kinds: Vec<&SegKind> = segs.iter().map(|s| &s.kind).collect();
        assert_eq!(
            kinds,
            vec![
                &SegKind::Insert,
                &SegKind::Update(vec![false, true]),
                &SegKind::Delete,
                &SegKind::Insert
            ]
        );
        assert_eq!(
            segs[1].rows,
            vec![vec![b("d"), b("1")], vec![b("e"), b("2")]]
        );
    }

    #[test]
    fn a_different_column_set_starts_a_new_segment() {
        let mut p = Pending::default();
        p.update(1, vec![true, false], vec![b("a")], vec![b("k")]);
        p.update(1, vec![false, true], vec![b("b")], vec![b("k")]);
        let t = p.take();
        assert_eq!(t[0].1.len(), 2, "both updates of k are kept, in order");
    }

    #[test]
    fn copy_rows_escape_what_copy_text_format_needs() {
        let mut out = BytesMut::new();
        copy_text_row(&mut out, &[b("a\tb\\c\nd\re"), None, b("")]);
        assert_eq!(&out[..], b"a\\tb\\\\c\\nd\\re\t\\N\t\n");
    }

    #[test]
    fn set_statements() {
        assert_eq!(
            update_sql("public.t", &[("v", "text")], &[("id", "integer")]),
            "UPDATE ONLY public.t AS t SET v = v.p1 FROM (SELECT u.p1::text AS p1, u.p2::integer AS p2 FROM ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::text[])) AS u(p1, p2)) AS v WHERE t.id = v.p2"
        );
        assert_eq!(
            delete_sql("public.t", &[("a", "integer"), ("\"B\"", "text")]),
            "DELETE FROM ONLY public.t AS t USING (SELECT u.p1::integer AS p1, u.p2::text AS p2 FROM ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::text[])) AS u(p1, p2)) AS v WHERE t.a = v.p1 AND t.\"B\" = v.p2"
        );
    }
}
