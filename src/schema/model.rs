//! The in-memory schema: one [`SchemaObject`] per thing pg_dump would print
//! as a TOC entry, with the statements that create it and the catalog
//! objects it depends on. Loading fills it; sorting orders it; emitting
//! prints it as pre-data / post-data SQL.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use thin_vec::ThinVec;

use super::sort::{ObjectKind, Section, SortKey};
use super::statements::Statements;

/// Catalog class OIDs (fixed in every PostgreSQL version), the first half of
/// the `(classid, objid)` pairs `pg_depend` speaks in.
pub mod class {
    pub const PG_CLASS: u32 = 1259;
    pub const PG_TYPE: u32 = 1247;
    pub const PG_PROC: u32 = 1255;
    pub const PG_NAMESPACE: u32 = 2615;
    pub const PG_CONSTRAINT: u32 = 2606;
    pub const PG_ATTRDEF: u32 = 2604;
    pub const PG_REWRITE: u32 = 2618;
    pub const PG_TRIGGER: u32 = 2620;
    pub const PG_EXTENSION: u32 = 3079;
    pub const PG_COLLATION: u32 = 3456;
}

/// A catalog object: `(classid, objid)`.
pub type CatalogRef = (u32, u32);

/// One dumpable object.
///
/// Compact on purpose: a 5000-tenant database has 115,000 of these, all
/// alive at the end of the schema load, where the run's heap peaks. Lists
/// are `ThinVec`s (one word, no allocation while empty: most objects have
/// no comment, ACL or `part_of`), texts that never grow are boxed `str`s,
/// and a post-data object shares its table's name (`data_of`) instead of
/// copying it; its statements are one allocation ([`Statements`]).
/// 368 bytes inline each before, 208 now.
#[derive(Debug, Clone)]
pub struct SchemaObject {
    pub key: SortKey,
    /// What it is, for messages and resume markers: `TABLE public.t`.
    pub describe: Box<str>,
    /// Statements that create it, in order, each ending with `;`.
    pub create: Statements,
    /// `ALTER ... OWNER TO ...`, emitted right after `create`.
    pub owner: Option<Box<str>>,
    /// `COMMENT ON ...` statements.
    pub comments: ThinVec<String>,
    /// GRANT / REVOKE statements, applied after the data (pg_restore's ACL pass).
    pub acl: ThinVec<String>,
    /// Catalog objects this one needs first; resolved to indices by [`SchemaModel::resolve`].
    pub needs: ThinVec<CatalogRef>,
    /// Objects of this model it needs first (indices), beyond `needs`.
    pub deps: ThinVec<usize>,
    /// For a view: a stand-in with the same columns, created in pre-data when
    /// the real definition depends on something post-data (a primary key
    /// used through GROUP BY); the real one then follows as CREATE OR REPLACE.
    pub placeholder: Option<Box<str>>,
    /// Moved to post-data because it depends on something there (a
    /// materialized view reading through a unique index, say).
    pub postponed: bool,
    /// Post-data object built from the rows of this table (quoted name): it
    /// may run as soon as that table is loaded, beside other tables' copies.
    pub data_of: Option<Arc<str>>,
    /// For a primary key or unique constraint: the `CREATE UNIQUE INDEX`
    /// that builds its index first, so the constraint is attached `USING
    /// INDEX`. Index builds take SHARE locks and run several at once on one
    /// table; `ADD CONSTRAINT` would hold ACCESS EXCLUSIVE for the whole build.
    pub index_first: Option<Box<str>>,
    /// For a foreign key added `NOT VALID`: the `VALIDATE CONSTRAINT` that
    /// checks the rows. Validations take only SHARE UPDATE EXCLUSIVE on the
    /// referencing table, so several run at once, unlike `ADD FOREIGN KEY`
    /// whose SHARE ROW EXCLUSIVE locks on both tables serialize (or deadlock).
    pub validate_later: Option<Box<str>>,
    /// The objects this one is a piece of (a table's index, trigger or
    /// default; a partition's ATTACH; a sequence's OWNED BY): it exists
    /// only when all of them do, so filters that leave one out leave it out.
    pub part_of: ThinVec<usize>,
}

impl SchemaObject {
    pub fn new(kind: ObjectKind, namespace: &str, name: &str, oid: u32, describe: String) -> Self {
        SchemaObject {
            key: SortKey {
                kind,
                namespace: namespace.into(),
                name: name.into(),
                tiebreak: ThinVec::new(),
                oid,
            },
            describe: describe.into_boxed_str(),
            create: Statements::default(),
            owner: None,
            comments: ThinVec::new(),
            acl: ThinVec::new(),
            needs: ThinVec::new(),
            deps: ThinVec::new(),
            placeholder: None,
            postponed: false,
            data_of: None,
            index_first: None,
            validate_later: None,
            part_of: ThinVec::new(),
        }
    }

    /// Give back what the loaders' building left unused: a list's first
    /// push reserves four slots where most objects hold one statement, one
    /// tiebreak, one edge, and `format!` guesses twice a string's literal
    /// length. At 25,000 tables (115,000 objects) that was a fifth of the
    /// schema load's peak memory. (The boxed texts are exact already.)
    pub fn shrink(&mut self) {
        fn strings(v: &mut ThinVec<String>) {
            v.iter_mut().for_each(String::shrink_to_fit);
            v.shrink_to_fit();
        }
        self.key.tiebreak.shrink_to_fit();
        strings(&mut self.comments);
        strings(&mut self.acl);
        self.needs.shrink_to_fit();
        self.deps.shrink_to_fit();
        self.part_of.shrink_to_fit();
    }

    pub fn section(&self) -> Section {
        self.key.kind.section()
    }

    /// A sequence of its own (`CREATE SEQUENCE`; the loader describes it
    /// as `SEQUENCE schema.name`), not a piece such as its OWNED BY.
    pub fn is_sequence(&self) -> bool {
        self.key.kind == ObjectKind::Table
            && self.part_of.is_empty()
            && self.describe.starts_with("SEQUENCE ")
    }
}

/// All objects, and which object answers for which catalog row.
#[derive(Debug, Default)]
pub struct SchemaModel {
    pub objects: Vec<SchemaObject>,
    /// Catalog rows that stand for an object: the object itself, and rows
    /// folded into it (a table's row type, a view's `_RETURN` rule, a
    /// column default printed inline, an index backing a constraint).
    pub by_ref: HashMap<CatalogRef, usize>,
    /// `pg_depend` edges `(dependent, referenced)` as the objects that
    /// answer for the two rows (see [`add_catalog_dep`](Self::add_catalog_dep)).
    catalog_edges: Vec<(u32, u32)>,
    /// Catalog edges a loader has taken over (e.g. a sequence's ownership,
    /// which becomes a separate OWNED BY step).
    pub skip_deps: HashSet<(CatalogRef, CatalogRef)>,
    /// The database's connection limit, template and connection flags
    /// (see [`DatabaseLimits`]), when any differs from the default.
    pub database_limits: Option<DatabaseLimits>,
    /// Every schema name the objects hold, once (see [`add`](Self::add)).
    namespaces: HashSet<Arc<str>>,
}

pub use crate::resume::DatabaseLimits;

impl SchemaModel {
    pub fn add(&mut self, mut obj: SchemaObject, refs: &[CatalogRef]) -> usize {
        obj.shrink();
        // A tenant schema's objects share one copy of its name: at 25,000
        // tables that is 100,000 small allocations fewer.
        match self.namespaces.get(&obj.key.namespace) {
            Some(n) => obj.key.namespace = n.clone(),
            None => {
                self.namespaces.insert(obj.key.namespace.clone());
            }
        }
        let i = self.objects.len();
        self.objects.push(obj);
        for r in refs {
            self.by_ref.insert(*r, i);
        }
        i
    }

    /// Drop every object `i` with `!keep[i]`, renumbering the rest (their
    /// edges to dropped objects go with them).
    pub fn retain(&mut self, keep: &[bool]) {
        let mut new_index = vec![usize::MAX; self.objects.len()];
        let mut next = 0;
        for (i, k) in keep.iter().enumerate() {
            if *k {
                new_index[i] = next;
                next += 1;
            }
        }
        let remap = |v: &mut ThinVec<usize>| {
            v.retain(|&d| new_index[d] != usize::MAX);
            for d in v.iter_mut() {
                *d = new_index[*d];
            }
        };
        let objects = std::mem::take(&mut self.objects);
        for (i, mut o) in objects.into_iter().enumerate() {
            if keep[i] {
                remap(&mut o.deps);
                remap(&mut o.part_of);
                self.objects.push(o);
            }
        }
        self.catalog_edges.retain_mut(|(a, b)| {
            let (na, nb) = (new_index[*a as usize], new_index[*b as usize]);
            (*a, *b) = (na as u32, nb as u32);
            na != usize::MAX && nb != usize::MAX
        });
        self.by_ref.retain(|_, i| new_index[*i] != usize::MAX);
        for i in self.by_ref.values_mut() {
            *i = new_index[*i];
        }
    }

    /// A `pg_depend` edge between two catalog rows, kept as an edge between
    /// the objects that answer for them, when both rows have one and they
    /// differ. Resolved as it arrives, so it must come after every object,
    /// alias and taken-over edge (`skip_deps`): the schema load reads
    /// `pg_depend` last. At 25,000 tables the catalog's 386,827 edges as
    /// row pairs were 8 MB held to the end of the load, including every
    /// edge that connects an object to itself or to a row outside the
    /// model, which drop here.
    pub fn add_catalog_dep(&mut self, from: CatalogRef, to: CatalogRef) {
        if self.skip_deps.contains(&(from, to)) {
            return;
        }
        if let (Some(&a), Some(&b)) = (self.by_ref.get(&from), self.by_ref.get(&to)) {
            let edge = (a as u32, b as u32);
            // A table's columns each repeat their table's edge, in a row.
            if a != b && self.catalog_edges.last() != Some(&edge) {
                self.catalog_edges.push(edge);
            }
        }
    }

    /// Let another catalog row stand for object `i` (a folded row).
    pub fn alias(&mut self, r: CatalogRef, i: usize) {
        self.by_ref.entry(r).or_insert(i);
    }

    /// Turn catalog dependencies into object dependencies: an edge between
    /// two rows becomes an edge between the objects that answer for them;
    /// edges to rows outside the model (built-ins, extension members) drop.
    /// As [`resolve`](Self::resolve), for a model about to become a
    /// script: the objects' own edges are moved, not copied, and the catalog
    /// edges and lookups, needed for nothing else, are freed (at 25,000
    /// tables they are tens of megabytes).
    ///
    /// Each list is allocated once at its final length, counted first: grown
    /// edge by edge, 115,000 lists left the heap in pieces, and beside the
    /// lookups still alive they were the run's peak at 25,000 tables.
    pub fn resolve_once(&mut self) -> Vec<Vec<usize>> {
        let mut count: Vec<u32> = self
            .objects
            .iter()
            .enumerate()
            .map(|(i, o)| {
                let needs = o
                    .needs
                    .iter()
                    .filter(|r| self.by_ref.get(r).is_some_and(|&j| j != i));
                (o.deps.len() + needs.count()) as u32
            })
            .collect();
        for &(a, _) in &self.catalog_edges {
            count[a as usize] += 1;
        }
        let mut deps: Vec<Vec<usize>> = Vec::with_capacity(self.objects.len());
        for (i, o) in self.objects.iter_mut().enumerate() {
            let mut d = Vec::with_capacity(count[i] as usize);
            d.extend(std::mem::take(&mut o.deps));
            for r in std::mem::take(&mut o.needs) {
                match self.by_ref.get(&r) {
                    Some(&j) if j != i => d.push(j),
                    _ => {}
                }
            }
            deps.push(d);
        }
        drop(count);
        self.skip_deps = HashSet::new();
        self.by_ref = HashMap::new();
        self.namespaces = HashSet::new();
        for (a, b) in std::mem::take(&mut self.catalog_edges) {
            deps[a as usize].push(b as usize);
        }
        for d in deps.iter_mut() {
            d.sort_unstable();
            d.dedup();
        }
        deps
    }

    pub fn resolve(&mut self) -> Vec<Vec<usize>> {
        let mut deps: Vec<Vec<usize>> = self.objects.iter().map(|o| o.deps.to_vec()).collect();
        self.add_catalog_edges(&mut deps);
        deps
    }

    /// `deps` (one list per object) with the edges of `needs` and of the
    /// catalog's dependencies added, each list sorted and deduplicated.
    fn add_catalog_edges(&self, deps: &mut [Vec<usize>]) {
        for (i, o) in self.objects.iter().enumerate() {
            for r in &o.needs {
                if let Some(&j) = self.by_ref.get(r) {
                    if j != i {
                        deps[i].push(j);
                    }
                }
            }
        }
        for &(a, b) in &self.catalog_edges {
            deps[a as usize].push(b as usize);
        }
        for d in deps.iter_mut() {
            d.sort_unstable();
            d.dedup();
        }
    }
}

#[cfg(test)]
mod size_tests {
    /// At 25,000 tables the model holds 115,000 objects when the run's heap
    /// peaks, so a field added inline costs 115,000 times its size. Widen
    /// these bounds only knowing that (see `SchemaObject`'s note).
    #[test]
    fn objects_stay_compact() {
        // 208: `create` is a boxed `str` (16 bytes, 8 more than the list
        // it replaced) that holds every statement in one allocation.
        assert!(std::mem::size_of::<super::SchemaObject>() <= 208);
        assert!(std::mem::size_of::<super::SortKey>() <= 48);
        assert!(std::mem::size_of::<crate::schema::Step>() <= 56);
    }
}
