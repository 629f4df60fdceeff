//! Dependency ordering for schema reproduction, modelled on pg_dump's
//! `pg_dump_sort.c` (PostgreSQL 18).
//!
//! The catalog loader hands us one [`SortKey`] per dumpable object plus the
//! dependency edges between them. We reproduce pg_dump's two-step order:
//! a deterministic type/name sort ([`initial_order`]), then a topological sort
//! that moves objects only as far as their dependencies force
//! ([`topo_sort`]). When the graph has cycles we report minimal loops so the
//! caller can apply pg_dump's repairs (shell types, separate CHECKs, dummy
//! views, ...) and retry ([`sort_with_repairs`]). Section boundaries
//! (pre-data / data / post-data) are ordinary objects with edges
//! ([`add_boundary_edges`]), exactly as in pg_dump, so one sort yields an
//! order that is valid section by section.
//!
//! Nothing here touches a database: the module is pure graph work so that it
//! can be tested exhaustively.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashSet, VecDeque};
use std::fmt;
use std::sync::Arc;

use thin_vec::ThinVec;

/// Restore section an object belongs to (pg_dump's `SECTION_*`).
///
/// The order matters: output is split at the boundaries, and pg_restore-like
/// consumers run pre-data before loading data and post-data afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Section {
    PreData,
    Data,
    PostData,
}

/// Every kind of object pg_dump 18 sorts, declared in its sort-priority order.
///
/// Variants mirror pg_dump's `DO_*` object types one to one, because the
/// initial order depends not only on the priority table but also on the
/// `DO_*` enum order (the tie-break between kinds that share a priority).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    Namespace,
    ProcLang,
    Collation,
    Transform,
    Extension,
    /// Base, enum, range, composite types and domains.
    Type,
    /// Shell type emitted to break a type ↔ I/O function loop.
    ShellType,
    Cast,
    Func,
    Agg,
    AccessMethod,
    Operator,
    OpFamily,
    OpClass,
    Conversion,
    TsParser,
    TsTemplate,
    TsDict,
    TsConfig,
    Fdw,
    ForeignServer,
    /// Tables, views, materialized views, sequences, foreign tables.
    Table,
    TableAttach,
    /// Placeholder composite type of a view that gets a dummy definition.
    DummyType,
    AttrDef,
    PreDataBoundary,
    TableData,
    SequenceSet,
    LargeObject,
    LargeObjectData,
    /// Relation statistics (pg_dump 18's `DO_REL_STATS`, "STATISTICS DATA").
    RelStats,
    PostDataBoundary,
    /// PRIMARY KEY / UNIQUE / EXCLUDE / CHECK, table and domain constraints.
    Constraint,
    Index,
    IndexAttach,
    /// Extended statistics (`CREATE STATISTICS`).
    StatsExt,
    Rule,
    Trigger,
    FkConstraint,
    Policy,
    Publication,
    PublicationRel,
    PublicationTableInSchema,
    Subscription,
    SubscriptionRel,
    DefaultAcl,
    EventTrigger,
    RefreshMatview,
    /// The database's owner, comment, privileges and settings
    /// (pg_dump `--create`'s DATABASE PROPERTIES).
    DatabaseProperties,
}

impl ObjectKind {
    /// All kinds in priority order; handy for exhaustive tests and tables.
    pub const ALL: [ObjectKind; 49] = [
        ObjectKind::Namespace,
        ObjectKind::ProcLang,
        ObjectKind::Collation,
        ObjectKind::Transform,
        ObjectKind::Extension,
        ObjectKind::Type,
        ObjectKind::ShellType,
        ObjectKind::Cast,
        ObjectKind::Func,
        ObjectKind::Agg,
        ObjectKind::AccessMethod,
        ObjectKind::Operator,
        ObjectKind::OpFamily,
        ObjectKind::OpClass,
        ObjectKind::Conversion,
        ObjectKind::TsParser,
        ObjectKind::TsTemplate,
        ObjectKind::TsDict,
        ObjectKind::TsConfig,
        ObjectKind::Fdw,
        ObjectKind::ForeignServer,
        ObjectKind::Table,
        ObjectKind::TableAttach,
        ObjectKind::DummyType,
        ObjectKind::AttrDef,
        ObjectKind::PreDataBoundary,
        ObjectKind::TableData,
        ObjectKind::SequenceSet,
        ObjectKind::LargeObject,
        ObjectKind::LargeObjectData,
        ObjectKind::RelStats,
        ObjectKind::PostDataBoundary,
        ObjectKind::Constraint,
        ObjectKind::Index,
        ObjectKind::IndexAttach,
        ObjectKind::StatsExt,
        ObjectKind::Rule,
        ObjectKind::Trigger,
        ObjectKind::FkConstraint,
        ObjectKind::Policy,
        ObjectKind::Publication,
        ObjectKind::PublicationRel,
        ObjectKind::PublicationTableInSchema,
        ObjectKind::Subscription,
        ObjectKind::SubscriptionRel,
        ObjectKind::DefaultAcl,
        ObjectKind::EventTrigger,
        ObjectKind::RefreshMatview,
        ObjectKind::DatabaseProperties,
    ];

    /// pg_dump's sort priority (`PRIO_*`, starting at 1).
    ///
    /// Casts sort before functions on purpose (pg_dump hoists only the
    /// functions casts use, not every function); triggers, event triggers and
    /// matview refreshes sort late so they do not interfere with loading.
    pub fn priority(&self) -> u32 {
        use ObjectKind::*;
        match self {
            Namespace => 1,
            ProcLang => 2,
            Collation => 3,
            Transform => 4,
            Extension => 5,
            Type | ShellType => 6,
            Cast => 7,
            Func => 8,
            Agg => 9,
            AccessMethod => 10,
            Operator => 11,
            OpFamily | OpClass => 12,
            Conversion => 13,
            TsParser => 14,
            TsTemplate => 15,
            TsDict => 16,
            TsConfig => 17,
            Fdw => 18,
            ForeignServer => 19,
            Table => 20,
            TableAttach => 21,
            DummyType => 22,
            AttrDef => 23,
            PreDataBoundary => 24,
            TableData => 25,
            SequenceSet => 26,
            LargeObject => 27,
            LargeObjectData => 28,
            RelStats => 29,
            PostDataBoundary => 30,
            Constraint => 31,
            Index => 32,
            IndexAttach => 33,
            StatsExt => 34,
            Rule => 35,
            Trigger => 36,
            FkConstraint => 37,
            Policy => 38,
            Publication => 39,
            PublicationRel => 40,
            PublicationTableInSchema => 41,
            Subscription => 42,
            SubscriptionRel => 43,
            DefaultAcl => 44,
            EventTrigger => 45,
            RefreshMatview => 46,
            DatabaseProperties => 47,
        }
    }

    /// Position in pg_dump's `DumpableObjectType` enum.
    ///
    /// pg_dump breaks name ties between different kinds by this number, not
    /// by priority: that is why a type sorts before its shell type and an
    /// operator class before an operator family of the same name.
    pub fn type_ordinal(&self) -> u32 {
        use ObjectKind::*;
        match self {
            Namespace => 0,
            Extension => 1,
            Type => 2,
            ShellType => 3,
            Func => 4,
            Agg => 5,
            Operator => 6,
            AccessMethod => 7,
            OpClass => 8,
            OpFamily => 9,
            Collation => 10,
            Conversion => 11,
            Table => 12,
            TableAttach => 13,
            AttrDef => 14,
            Index => 15,
            IndexAttach => 16,
            StatsExt => 17,
            Rule => 18,
            Trigger => 19,
            Constraint => 20,
            FkConstraint => 21,
            ProcLang => 22,
            Cast => 23,
            TableData => 24,
            SequenceSet => 25,
            DummyType => 26,
            TsParser => 27,
            TsDict => 28,
            TsTemplate => 29,
            TsConfig => 30,
            Fdw => 31,
            ForeignServer => 32,
            DefaultAcl => 33,
            Transform => 34,
            LargeObject => 35,
            LargeObjectData => 36,
            PreDataBoundary => 37,
            PostDataBoundary => 38,
            EventTrigger => 39,
            RefreshMatview => 40,
            Policy => 41,
            Publication => 42,
            PublicationRel => 43,
            PublicationTableInSchema => 44,
            RelStats => 45,
            Subscription => 46,
            SubscriptionRel => 47,
            DatabaseProperties => 48,
        }
    }

    /// Section pg_dump files this kind under (its `addBoundaryDependencies`).
    ///
    /// Three kinds depend on the individual object, which only the caller
    /// knows; they report their usual section here and the caller overrides
    /// it in [`add_boundary_edges`]:
    /// * `Constraint`, `FkConstraint`, `Rule`: post-data only when dumped
    ///   separately; inline ones (a CHECK in `CREATE TABLE`, a view's
    ///   `_RETURN` rule) travel with their owner and get no boundary edge.
    /// * `RelStats`: data for tables, post-data for indexes and matviews.
    ///
    /// The boundaries close the section before them: the pre-data boundary
    /// is the last pre-data object, the post-data boundary the last data one.
    pub fn section(&self) -> Section {
        use ObjectKind::*;
        match self {
            Namespace | ProcLang | Collation | Transform | Extension | Type | ShellType | Cast
            | Func | Agg | AccessMethod | Operator | OpFamily | OpClass | Conversion | TsParser
            | TsTemplate | TsDict | TsConfig | Fdw | ForeignServer | Table | TableAttach
            | DummyType | AttrDef | PreDataBoundary => Section::PreData,
            TableData | SequenceSet | LargeObject | LargeObjectData | RelStats
            | PostDataBoundary => Section::Data,
            Constraint
            | Index
            | IndexAttach
            | StatsExt
            | Rule
            | Trigger
            | FkConstraint
            | Policy
            | Publication
            | PublicationRel
            | PublicationTableInSchema
            | Subscription
            | SubscriptionRel
            | DefaultAcl
            | EventTrigger
            | RefreshMatview
            | DatabaseProperties => Section::PostData,
        }
    }

    /// Human label used in loop warnings (pg_dump's describeDumpableObject).
    pub fn label(&self) -> &'static str {
        use ObjectKind::*;
        match self {
            Namespace => "SCHEMA",
            ProcLang => "PROCEDURAL LANGUAGE",
            Collation => "COLLATION",
            Transform => "TRANSFORM",
            Extension => "EXTENSION",
            Type => "TYPE",
            ShellType => "SHELL TYPE",
            Cast => "CAST",
            Func => "FUNCTION",
            Agg => "AGGREGATE",
            AccessMethod => "ACCESS METHOD",
            Operator => "OPERATOR",
            OpFamily => "OPERATOR FAMILY",
            OpClass => "OPERATOR CLASS",
            Conversion => "CONVERSION",
            TsParser => "TEXT SEARCH PARSER",
            TsTemplate => "TEXT SEARCH TEMPLATE",
            TsDict => "TEXT SEARCH DICTIONARY",
            TsConfig => "TEXT SEARCH CONFIGURATION",
            Fdw => "FOREIGN DATA WRAPPER",
            ForeignServer => "FOREIGN SERVER",
            Table => "TABLE",
            TableAttach => "TABLE ATTACH",
            DummyType => "DUMMY TYPE",
            AttrDef => "ATTRDEF",
            PreDataBoundary => "PRE-DATA BOUNDARY",
            TableData => "TABLE DATA",
            SequenceSet => "SEQUENCE SET",
            LargeObject => "LARGE OBJECT",
            LargeObjectData => "LARGE OBJECT DATA",
            RelStats => "RELATION STATISTICS",
            PostDataBoundary => "POST-DATA BOUNDARY",
            Constraint => "CONSTRAINT",
            Index => "INDEX",
            IndexAttach => "INDEX ATTACH",
            StatsExt => "STATISTICS",
            Rule => "RULE",
            Trigger => "TRIGGER",
            FkConstraint => "FK CONSTRAINT",
            Policy => "POLICY",
            Publication => "PUBLICATION",
            PublicationRel => "PUBLICATION TABLE",
            PublicationTableInSchema => "PUBLICATION TABLES IN SCHEMA",
            Subscription => "SUBSCRIPTION",
            SubscriptionRel => "SUBSCRIPTION TABLE",
            DefaultAcl => "DEFAULT ACL",
            EventTrigger => "EVENT TRIGGER",
            RefreshMatview => "REFRESH MATERIALIZED VIEW",
            DatabaseProperties => "DATABASE PROPERTIES",
        }
    }
}

/// What pg_dump's `DOTypeNameCompare` looks at for one object.
///
/// Ordering (the [`Ord`] impl): priority, namespace, name, kind
/// ([`ObjectKind::type_ordinal`]), `tiebreak` element by element, `oid`.
///
/// * `namespace` is the empty string for objects without one (PostgreSQL
///   forbids empty identifiers, so no real schema collides with it). Like
///   pg_dump, objects **without** a namespace sort **after** those with one
///   of the same priority.
/// * `name` is pg_dump's `dobj.name`, which is not always the printed tag:
///   a constraint's or trigger's own name, an attrdef's table name, a
///   publication-rel's relation name, a cast's `"source target"` type names.
/// * `tiebreak` carries the rest of the natural key, compared as a
///   lexicographic list of byte strings. Encode it so that list order equals
///   pg_dump's order: functions/aggregates push the argument count first
///   (via [`tiebreak_int`]) then `nspname, typname` per argument; operators
///   push their kind in reverse order, then left and right type
///   `nspname, typname`; opclasses/opfamilies the access method name;
///   collations the encoding; attrdefs the column number; rules, triggers
///   and policies the table name; constraints `"0", domain` for domain
///   constraints and `"1", table` for table ones; default ACLs the role;
///   publication rels and schema memberships the publication name;
///   subscription rels the subscription name.
/// * `oid` is the last resort, as in pg_dump (it only decides between
///   objects the catalogs consider identical, which should not happen).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SortKey {
    pub kind: ObjectKind,
    /// Shared: a schema's objects hold one copy of its name between them
    /// (see `SchemaModel::add`).
    pub namespace: Arc<str>,
    pub name: Box<str>,
    /// Shared where a loader has one to share (the table's name on each of
    /// its indexes, constraints and triggers).
    pub tiebreak: ThinVec<Arc<str>>,
    pub oid: u32,
}

impl SortKey {
    /// Key with no tie-breakers and oid 0; fill the public fields for more.
    pub fn new(
        kind: ObjectKind,
        namespace: impl Into<Arc<str>>,
        name: impl Into<Box<str>>,
    ) -> Self {
        SortKey {
            kind,
            namespace: namespace.into(),
            name: name.into(),
            tiebreak: ThinVec::new(),
            oid: 0,
        }
    }
}

/// pg_dump sorts a missing namespace after every present one.
fn cmp_namespace(a: &str, b: &str) -> Ordering {
    match (a.is_empty(), b.is_empty()) {
        (false, false) => a.cmp(b),
        (false, true) => Ordering::Less,
        (true, false) => Ordering::Greater,
        (true, true) => Ordering::Equal,
    }
}

impl Ord for SortKey {
    fn cmp(&self, other: &Self) -> Ordering {
        // `str` compares bytewise, which is exactly strcmp on UTF-8 names.
        self.kind
            .priority()
            .cmp(&other.kind.priority())
            .then_with(|| cmp_namespace(&self.namespace, &other.namespace))
            .then_with(|| self.name.cmp(&other.name))
            .then_with(|| self.kind.type_ordinal().cmp(&other.kind.type_ordinal()))
            .then_with(|| self.tiebreak.cmp(&other.tiebreak))
            .then_with(|| self.oid.cmp(&other.oid))
    }
}

impl PartialOrd for SortKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for SortKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.label())?;
        if !self.name.is_empty() {
            f.write_str(" ")?;
            if !self.namespace.is_empty() {
                write!(f, "{}.", self.namespace)?;
            }
            f.write_str(&self.name)?;
        }
        if self.oid != 0 {
            write!(f, " (OID {})", self.oid)?;
        }
        Ok(())
    }
}

/// Encode an integer so that string order equals numeric order.
///
/// Tie-breakers are strings; pg_dump compares counts and numbers (argument
/// count, attnum, encoding) numerically, and `"10" < "9"` would break that.
pub fn tiebreak_int(n: i64) -> String {
    // Flipping the sign bit maps i64 order onto u64 order; fixed-width hex
    // keeps the string comparison faithful.
    format!("{:016x}", (n as u64) ^ (1u64 << 63))
}

/// Indices of `keys` in pg_dump's type/name order.
///
/// Ties between identical keys are broken by index so the result never
/// depends on the sort algorithm's stability.
pub fn initial_order<K: std::borrow::Borrow<SortKey>>(keys: &[K]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_unstable_by(|&a, &b| keys[a].borrow().cmp(keys[b].borrow()).then(a.cmp(&b)));
    order
}

fn check_graph(n: usize, deps: &[Vec<usize>]) -> Result<(), String> {
    if deps.len() != n {
        return Err(format!(
            "dependency list has {} entries for {} objects",
            deps.len(),
            n
        ));
    }
    for (i, d) in deps.iter().enumerate() {
        if let Some(&bad) = d.iter().find(|&&j| j >= n) {
            return Err(format!(
                "object {i} depends on {bad}, but there are only {n} objects"
            ));
        }
    }
    Ok(())
}

/// Order the objects so every dependency comes first, disturbing the
/// [`initial_order`] as little as possible.
///
/// `deps[i]` lists the objects `i` depends on. The result is a permutation
/// of `0..keys.len()`.
///
/// Like pg_dump's TopoSort this is Kahn's algorithm run from the end: among
/// the objects nothing unplaced depends on, the one latest in the initial
/// order goes last. An object therefore moves only when something earlier
/// needs it, and then only to just before its first dependent, so logically
/// identical schemas always print in the same order. Duplicate edges are
/// harmless.
///
/// On failure returns dependency loops: each loop lists object indices such
/// that `loop[k]` depends on `loop[k + 1]` and the last depends on the first
/// (a self-dependency is a one-element loop). For every object that lies on
/// a cycle, a shortest loop through it is reported; each distinct loop once,
/// starting at its member that comes first in the initial order, shortest
/// loops first (then by that first member). Objects blocked only because a
/// loop member depends on them are not reported — they are not part of the
/// problem. Loops may share members; see [`sort_with_repairs`] for why
/// repairs handle only disjoint ones per round.
///
/// # Panics
/// If `deps.len() != keys.len()` or an edge points outside `0..keys.len()`;
/// both are loader bugs, not data conditions.
/// `keys` by value or by reference: a caller that only checks for loops
/// need not copy every object's key (names and all) first.
pub fn topo_sort<K: std::borrow::Borrow<SortKey>>(
    keys: &[K],
    deps: &[Vec<usize>],
) -> Result<Vec<usize>, Vec<Vec<usize>>> {
    let n = keys.len();
    if let Err(e) = check_graph(n, deps) {
        panic!("topo_sort: {e}");
    }
    // Positions and counts as `u32`: at 25,000 tables (115,000 objects)
    // these arrays are the peak of the run's memory while they live.
    assert!(
        u32::try_from(n).is_ok(),
        "topo_sort: more than 2^32 objects"
    );
    let order = initial_order(keys);
    let mut pos = vec![0u32; n];
    for (p, &i) in order.iter().enumerate() {
        pos[i] = p as u32;
    }

    // dependents[i]: how many edges still say "i must come before something
    // not yet placed".
    let mut dependents = vec![0u32; n];
    for d in deps {
        for &j in d {
            dependents[j] += 1;
        }
    }

    // Max-heap of initial positions: the latest free object is placed last.
    let mut heap: BinaryHeap<u32> = (0..n)
        .filter(|&i| dependents[i] == 0)
        .map(|i| pos[i])
        .collect();
    let mut out = vec![usize::MAX; n];
    let mut remaining = n;
    while let Some(p) = heap.pop() {
        let i = order[p as usize];
        remaining -= 1;
        out[remaining] = i;
        for &j in &deps[i] {
            dependents[j] -= 1;
            if dependents[j] == 0 {
                heap.push(pos[j]);
            }
        }
    }
    if remaining == 0 {
        return Ok(out);
    }

    let stuck: Vec<bool> = dependents.iter().map(|&c| c > 0).collect();
    Err(find_loops(deps, &stuck, &order, &pos))
}

/// Tarjan's strongly connected components over the stuck objects, iterative
/// so a long dependency chain cannot overflow the stack.
fn strongly_connected(deps: &[Vec<usize>], stuck: &[bool], order: &[usize]) -> Vec<usize> {
    const UNSEEN: usize = usize::MAX;
    let n = deps.len();
    let mut index = vec![UNSEEN; n];
    let mut low = vec![0usize; n];
    let mut on_stack = vec![false; n];
    let mut comp = vec![UNSEEN; n];
    let mut stack = Vec::new();
    let mut call: Vec<(usize, usize)> = Vec::new();
    let mut next_index = 0usize;
    let mut next_comp = 0usize;

    for &root in order {
        if !stuck[root] || index[root] != UNSEEN {
            continue;
        }
        index[root] = next_index;
        low[root] = next_index;
        next_index += 1;
        stack.push(root);
        on_stack[root] = true;
        call.push((root, 0));

        while let Some(frame) = call.last_mut() {
            let (u, edge) = *frame;
            if edge < deps[u].len() {
                frame.1 += 1;
                let w = deps[u][edge];
                // A stuck object's dependencies are all stuck (nothing
                // released them), so this filter only guards the invariant.
                if !stuck[w] {
                    continue;
                }
                if index[w] == UNSEEN {
                    index[w] = next_index;
                    low[w] = next_index;
                    next_index += 1;
                    stack.push(w);
                    on_stack[w] = true;
                    call.push((w, 0));
                } else if on_stack[w] {
                    low[u] = low[u].min(index[w]);
                }
            } else {
                call.pop();
                if let Some(&(parent, _)) = call.last() {
                    low[parent] = low[parent].min(low[u]);
                }
                if low[u] == index[u] {
                    loop {
                        let w = stack.pop().expect("Tarjan stack underflow");
                        on_stack[w] = false;
                        comp[w] = next_comp;
                        if w == u {
                            break;
                        }
                    }
                    next_comp += 1;
                }
            }
        }
    }
    comp
}

/// The shortest loop through every object that lies on a cycle.
///
/// pg_dump finds loops by depth-first search, which can return a long loop
/// where a 2-object one exists; its repairs are keyed on loop shape (a table
/// and its CHECK alone vs. with other objects) and expect short loops first.
/// So we run a breadth-first search inside each strongly connected component
/// from every member, keep each distinct loop once, and list them shortest
/// first.
fn find_loops(
    deps: &[Vec<usize>],
    stuck: &[bool],
    order: &[usize],
    pos: &[u32],
) -> Vec<Vec<usize>> {
    let n = deps.len();
    let comp = strongly_connected(deps, stuck, order);
    let mut comp_size = vec![0usize; n];
    for (i, &c) in comp.iter().enumerate() {
        if stuck[i] {
            comp_size[c] += 1;
        }
    }
    let on_cycle = |i: usize| stuck[i] && (comp_size[comp[i]] > 1 || deps[i].contains(&i));

    let mut seen_from = vec![usize::MAX; n];
    let mut parent = vec![usize::MAX; n];
    let mut queue = VecDeque::new();
    let mut distinct = HashSet::new();
    let mut loops = Vec::new();

    for &s in order {
        if !on_cycle(s) {
            continue;
        }
        queue.clear();
        queue.push_back(s);
        seen_from[s] = s;
        let mut found = None;
        'bfs: while let Some(u) = queue.pop_front() {
            for &w in &deps[u] {
                if w == s {
                    found = Some(u);
                    break 'bfs;
                }
                if comp[w] == comp[s] && seen_from[w] != s {
                    seen_from[w] = s;
                    parent[w] = u;
                    queue.push_back(w);
                }
            }
        }
        let last = found.expect("object on a cycle has no path back to itself");
        let mut path = vec![last];
        let mut x = last;
        while x != s {
            x = parent[x];
            path.push(x);
        }
        path.reverse();
        // Canonical rotation, so the same loop found from two members is
        // recognised as one.
        let first = (0..path.len())
            .min_by_key(|&k| pos[path[k]])
            .expect("loop is never empty");
        path.rotate_left(first);
        if distinct.insert(path.clone()) {
            loops.push(path);
        }
    }
    loops.sort_by_key(|l| (l.len(), pos[l[0]]));
    loops
}

/// Whether every edge of `lp` (each member depending on the next) remains.
fn loop_intact(lp: &[usize], deps: &[Vec<usize>]) -> bool {
    (0..lp.len()).all(|k| deps[lp[k]].contains(&lp[(k + 1) % lp.len()]))
}

fn describe_loop<K: std::borrow::Borrow<SortKey>>(keys: &[K], lp: &[usize]) -> String {
    lp.iter()
        .map(|&i| format!("{} [#{}]", keys[i].borrow(), i))
        .collect::<Vec<_>>()
        .join(", ")
}

/// pg_dump's last resort: drop the first member's dependency on the second.
fn break_arbitrarily<K: std::borrow::Borrow<SortKey>>(
    keys: &[K],
    lp: &[usize],
    deps: &mut [Vec<usize>],
    why: &str,
    warnings: &mut Vec<String>,
) {
    let from = lp[0];
    let to = lp[1 % lp.len()];
    let all_data = lp
        .iter()
        .all(|&i| keys[i].borrow().kind == ObjectKind::TableData);
    let (from_key, to_key) = (keys[from].borrow(), keys[to].borrow());
    let msg = if all_data {
        // Data-only dumps see foreign keys as data dependencies; pg_dump gives
        // this case its own message because the fix is on the user's side.
        format!(
            "there are circular foreign-key constraints among these tables: {}; \
             restoring may need triggers disabled; dropped the dependency of {} on {}",
            describe_loop(keys, lp),
            from_key,
            to_key
        )
    } else {
        format!(
            "could not resolve dependency loop among these items: {} ({why}); \
             dropped the dependency of {} on {}",
            describe_loop(keys, lp),
            from_key,
            to_key
        )
    };
    warnings.push(msg);
    deps[from].retain(|&d| d != to);
}

/// Caller's loop repair for [`sort_with_repairs`]: gets one loop and the
/// dependency lists, rewrites edges, and says whether it handled the loop.
pub type LoopRepair<'a> = dyn FnMut(&[usize], &mut Vec<Vec<usize>>) -> bool + 'a;

/// Sort, letting the caller repair dependency loops, until an order exists.
///
/// `repair(loop, deps)` receives one loop from [`topo_sort`] (each member
/// depends on the next) and may rewrite any edges — remove the edge that
/// makes a loop, redirect a function to a shell type, make a CHECK separate
/// and send it past the post-data boundary — returning `true` if it handled
/// the loop. It must not add objects (`deps.len()` stays) — add them before
/// sorting.
///
/// Per round, only loops sharing no member with an earlier loop of the same
/// round go to `repair`, as in pg_dump: fixing one loop often fixes an
/// overlapping one, and a second repair on stale information could undo it.
/// The rest are seen again next round.
///
/// A loop the callback declines (or claims to fix but leaves intact) is
/// broken the way pg_dump does it — the first member loses its dependency on
/// the second — with a warning in the returned list. Repairs that keep
/// creating new loops are given a generous budget of rounds; after that every
/// remaining loop is broken arbitrarily, which only removes edges, so the
/// function always terminates.
///
/// Returns the order and the warnings, or an error if `deps` is malformed
/// (wrong length or an edge out of range), before or after a repair.
pub fn sort_with_repairs<K: std::borrow::Borrow<SortKey>>(
    keys: &[K],
    deps: &mut Vec<Vec<usize>>,
    repair: &mut LoopRepair<'_>,
) -> Result<(Vec<usize>, Vec<String>), String> {
    let n = keys.len();
    check_graph(n, deps)?;
    let edges: usize = deps.iter().map(Vec::len).sum();
    let repair_budget = n + edges + 16;
    let mut warnings = Vec::new();
    let mut round = 0usize;
    loop {
        let loops = match topo_sort(keys, deps) {
            Ok(order) => return Ok((order, warnings)),
            Err(loops) => loops,
        };
        round += 1;
        let use_repair = round <= repair_budget;
        if round == repair_budget + 1 {
            warnings.push(format!(
                "dependency loop repair did not converge after {repair_budget} rounds; \
                 breaking the remaining loops arbitrarily"
            ));
        }
        let mut claimed = vec![false; n];
        for lp in &loops {
            if lp.iter().any(|&i| claimed[i]) {
                continue;
            }
            for &i in lp {
                claimed[i] = true;
            }
            let why = if use_repair {
                let handled = repair(lp, deps);
                check_graph(n, deps).map_err(|e| {
                    format!(
                        "repair of the loop {} left the graph invalid: {e}",
                        describe_loop(keys, lp)
                    )
                })?;
                if !loop_intact(lp, deps) {
                    continue;
                }
                if handled {
                    "the repair reported success but left the loop intact"
                } else {
                    "no repair applies"
                }
            } else {
                "repairs did not converge"
            };
            break_arbitrarily(keys, lp, deps, why, &mut warnings);
        }
    }
}

/// Indices of the two boundary objects added by [`add_boundary_edges`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Boundaries {
    pub pre_data: usize,
    pub post_data: usize,
}

/// Append pg_dump's two section boundary objects and the edges that keep
/// each object in its section (pg_dump's `addBoundaryDependencies`).
///
/// After sorting, pre-data objects come before the pre-data boundary, data
/// objects between the boundaries, post-data objects after the post-data
/// boundary. Going through the graph rather than sorting sections separately
/// lets loop repair move an object across a boundary (pg_dump postpones a
/// matview or function into post-data by removing its boundary edge).
///
/// `section_of(i, key)` places object `i`; return `None` for objects that
/// must not be pinned, such as CHECK constraints and `_RETURN` rules printed
/// inline with their table or view, and usually
/// `Some(key.kind.section())` otherwise (post-data for the stats of indexes
/// and matviews). Boundary objects already present are left alone.
///
/// # Panics
/// If `deps.len() != keys.len()`.
pub fn add_boundary_edges(
    keys: &mut Vec<SortKey>,
    deps: &mut Vec<Vec<usize>>,
    mut section_of: impl FnMut(usize, &SortKey) -> Option<Section>,
) -> Boundaries {
    assert_eq!(
        keys.len(),
        deps.len(),
        "add_boundary_edges: one dependency list per object"
    );
    let n = keys.len();
    let b = Boundaries {
        pre_data: n,
        post_data: n + 1,
    };
    keys.push(SortKey::new(
        ObjectKind::PreDataBoundary,
        "",
        "PRE-DATA BOUNDARY",
    ));
    keys.push(SortKey::new(
        ObjectKind::PostDataBoundary,
        "",
        "POST-DATA BOUNDARY",
    ));
    deps.push(Vec::new());
    deps.push(vec![b.pre_data]);
    for i in 0..n {
        if matches!(
            keys[i].kind,
            ObjectKind::PreDataBoundary | ObjectKind::PostDataBoundary
        ) {
            continue;
        }
        match section_of(i, &keys[i]) {
            Some(Section::PreData) => deps[b.pre_data].push(i),
            Some(Section::Data) => {
                deps[i].push(b.pre_data);
                deps[b.post_data].push(i);
            }
            Some(Section::PostData) => deps[i].push(b.post_data),
            None => {}
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    use ObjectKind::*;

    fn key(kind: ObjectKind, ns: &str, name: &str) -> SortKey {
        SortKey::new(kind, ns, name)
    }

    /// Tables in schema `public`, named as given: the common test fixture.
    fn tables(names: &[&str]) -> Vec<SortKey> {
        names.iter().map(|n| key(Table, "public", n)).collect()
    }

    fn names(keys: &[SortKey], order: &[usize]) -> Vec<String> {
        order.iter().map(|&i| keys[i].name.to_string()).collect()
    }

    fn idx(keys: &[SortKey], name: &str) -> usize {
        keys.iter().position(|k| &*k.name == name).unwrap()
    }

    /// deps from (dependent, dependency) name pairs.
    fn deps_from(keys: &[SortKey], edges: &[(&str, &str)]) -> Vec<Vec<usize>> {
        let mut deps = vec![Vec::new(); keys.len()];
        for (a, b) in edges {
            deps[idx(keys, a)].push(idx(keys, b));
        }
        deps
    }

    fn assert_valid(order: &[usize], deps: &[Vec<usize>]) {
        let n = deps.len();
        assert_eq!(order.len(), n);
        let mut pos = vec![usize::MAX; n];
        for (p, &i) in order.iter().enumerate() {
            assert_eq!(pos[i], usize::MAX, "object {i} emitted twice");
            pos[i] = p;
        }
        for (i, d) in deps.iter().enumerate() {
            for &j in d {
                assert!(pos[j] < pos[i], "{i} depends on {j} but comes first");
            }
        }
    }

    fn loop_names(keys: &[SortKey], loops: &[Vec<usize>]) -> Vec<Vec<String>> {
        loops.iter().map(|l| names(keys, l)).collect()
    }

    /// Deterministic 64-bit LCG (Knuth's MMIX constants); no rand crate.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn shuffle<T>(&mut self, v: &mut [T]) {
            for i in (1..v.len()).rev() {
                let j = self.below(i + 1);
                v.swap(i, j);
            }
        }
    }

    /// Straightforward O(n²) statement of pg_dump's rule, to check the heap
    /// version against: repeatedly place last the latest object (in initial
    /// order) that no unplaced object depends on.
    fn reference_sort(keys: &[SortKey], deps: &[Vec<usize>]) -> Option<Vec<usize>> {
        let n = keys.len();
        let order = initial_order(keys);
        let mut placed = vec![false; n];
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let free = |i: usize| !placed[i] && (0..n).all(|k| placed[k] || !deps[k].contains(&i));
            let pick = order.iter().rev().copied().find(|&i| free(i))?;
            placed[pick] = true;
            out.push(pick);
        }
        out.reverse();
        Some(out)
    }

    // ---- the priority table ------------------------------------------

    #[test]
    fn priorities_follow_pg_dump_table() {
        let mut prev = 0;
        for k in ObjectKind::ALL {
            let p = k.priority();
            let shares = matches!(k, ShellType | OpClass);
            if shares {
                assert_eq!(p, prev, "{k:?} shares its predecessor's priority");
            } else {
                assert_eq!(p, prev + 1, "{k:?} is the next priority level");
            }
            prev = p;
        }
        assert_eq!(Namespace.priority(), 1);
        assert_eq!(RefreshMatview.priority(), 46);
        assert_eq!(Type.priority(), ShellType.priority());
        assert_eq!(OpFamily.priority(), OpClass.priority());
        let mut ordinals: Vec<u32> = ObjectKind::ALL.iter().map(|k| k.type_ordinal()).collect();
        ordinals.sort_unstable();
        assert_eq!(
            ordinals,
            (0..49).collect::<Vec<_>>(),
            "ordinals are a permutation"
        );
    }

    #[test]
    fn sections_agree_with_boundary_priorities() {
        // pg_dump's invariant: pre-data sorts before the pre-data boundary,
        // data between the boundaries, post-data after the post-data one.
        let pre = PreDataBoundary.priority();
        let post = PostDataBoundary.priority();
        for k in ObjectKind::ALL {
            if matches!(k, PreDataBoundary | PostDataBoundary) {
                continue;
            }
            let p = k.priority();
            match k.section() {
                Section::PreData => assert!(p < pre, "{k:?}"),
                Section::Data => assert!(pre < p && p < post, "{k:?}"),
                Section::PostData => assert!(p > post, "{k:?}"),
            }
        }
        assert_eq!(LargeObject.section(), Section::Data);
        assert_eq!(DefaultAcl.section(), Section::PostData);
        assert_eq!(TableAttach.section(), Section::PreData);
    }

    // ---- initial order -----------------------------------------------

    #[test]
    fn initial_order_priority_namespace_name() {
        let keys = vec![
            key(Index, "a", "a_idx"),
            key(Table, "public", "b"),
            key(Table, "public", "a"),
            key(Table, "app", "z"),
            key(Namespace, "", "public"),
            key(Func, "public", "f"),
            key(Cast, "", "int4 mytype"),
        ];
        let got = names(&keys, &initial_order(&keys));
        assert_eq!(
            got,
            ["public", "int4 mytype", "f", "z", "a", "b", "a_idx"],
            "priority first (cast before function), then schema, then name"
        );
    }

    #[test]
    fn missing_namespace_sorts_after_present_one() {
        // Same priority, one with and one without a schema: pg_dump puts the
        // schema-less object last even though "" < "zzz".
        let keys = vec![key(Constraint, "", "aaa"), key(Constraint, "zzz", "bbb")];
        assert_eq!(names(&keys, &initial_order(&keys)), ["bbb", "aaa"]);
    }

    #[test]
    fn kind_breaks_name_ties_by_pg_dump_enum_not_priority() {
        let keys = vec![
            key(OpFamily, "public", "ops"),
            key(ShellType, "public", "t"),
            key(OpClass, "public", "ops"),
            key(Type, "public", "t"),
        ];
        let got: Vec<ObjectKind> = initial_order(&keys).iter().map(|&i| keys[i].kind).collect();
        assert_eq!(got, [Type, ShellType, OpClass, OpFamily]);
    }

    #[test]
    fn tiebreak_then_oid() {
        let mut f_int_text = key(Func, "public", "f");
        f_int_text.tiebreak = thin_vec::thin_vec![
            tiebreak_int(2).into(),
            "pg_catalog".into(),
            "int4".into(),
            "pg_catalog".into(),
            "text".into(),
        ];
        f_int_text.oid = 1;
        let mut f_text = key(Func, "public", "f");
        f_text.tiebreak =
            thin_vec::thin_vec![tiebreak_int(1).into(), "pg_catalog".into(), "text".into()];
        f_text.oid = 2;
        let mut f_int = key(Func, "public", "f");
        f_int.tiebreak =
            thin_vec::thin_vec![tiebreak_int(1).into(), "pg_catalog".into(), "int4".into()];
        f_int.oid = 3;
        let mut dup_hi = key(Func, "public", "g");
        dup_hi.oid = 20;
        let mut dup_lo = key(Func, "public", "g");
        dup_lo.oid = 10;
        let keys = vec![f_int_text, f_text, f_int, dup_hi, dup_lo];
        let oids: Vec<u32> = initial_order(&keys).iter().map(|&i| keys[i].oid).collect();
        assert_eq!(
            oids,
            [3, 2, 1, 10, 20],
            "arg count, then arg types, then oid"
        );
    }

    #[test]
    fn tiebreak_int_orders_numerically() {
        let v = [-300i64, -2, -1, 0, 1, 9, 10, 1000, i64::MAX, i64::MIN];
        let mut by_string: Vec<i64> = v.to_vec();
        by_string.sort_by_key(|&n| tiebreak_int(n));
        let mut by_number = v.to_vec();
        by_number.sort_unstable();
        assert_eq!(by_string, by_number);
    }

    #[test]
    fn identical_keys_keep_input_order() {
        let keys = tables(&["t", "t", "t"]);
        assert_eq!(initial_order(&keys), [0, 1, 2]);
        assert_eq!(
            topo_sort(&keys, &[vec![], vec![], vec![]]).unwrap(),
            [0, 1, 2]
        );
    }

    // ---- topological sort --------------------------------------------

    #[test]
    fn empty_and_trivial_inputs() {
        assert_eq!(topo_sort::<SortKey>(&[], &[]).unwrap(), Vec::<usize>::new());
        let keys = tables(&["only"]);
        assert_eq!(topo_sort(&keys, &[vec![]]).unwrap(), [0]);
    }

    #[test]
    fn dependency_overrides_name_order() {
        // A view named before the table it reads.
        let keys = tables(&["a_view", "z_table"]);
        let deps = deps_from(&keys, &[("a_view", "z_table")]);
        let order = topo_sort(&keys, &deps).unwrap();
        assert_eq!(names(&keys, &order), ["z_table", "a_view"]);
    }

    #[test]
    fn dependency_overrides_priority_order() {
        // A function used by a cast is hoisted above the cast, and only it.
        let keys = vec![
            key(Cast, "", "text mytype"),
            key(Func, "public", "a_unrelated"),
            key(Func, "public", "to_mytype"),
        ];
        let deps = deps_from(&keys, &[("text mytype", "to_mytype")]);
        let order = topo_sort(&keys, &deps).unwrap();
        assert_eq!(
            names(&keys, &order),
            ["to_mytype", "text mytype", "a_unrelated"]
        );
    }

    #[test]
    fn minimal_disturbance_hoists_just_before_first_dependent() {
        // Initial: a b c d e; b needs e. Worked by hand: placing from the end,
        // d and c go last, then b frees e, which lands right before b.
        // Forward Kahn with a min-heap would instead give a c d e b.
        let keys = tables(&["a", "b", "c", "d", "e"]);
        let deps = deps_from(&keys, &[("b", "e")]);
        let order = topo_sort(&keys, &deps).unwrap();
        assert_eq!(names(&keys, &order), ["a", "e", "b", "c", "d"]);
        assert_eq!(reference_sort(&keys, &deps).unwrap(), order);
    }

    #[test]
    fn minimal_disturbance_moves_a_chain_as_a_block() {
        // b needs e, e needs d: d and e move up together, in that order, and
        // c keeps its place after b.
        let keys = tables(&["a", "b", "c", "d", "e"]);
        let deps = deps_from(&keys, &[("b", "e"), ("e", "d")]);
        let order = topo_sort(&keys, &deps).unwrap();
        assert_eq!(names(&keys, &order), ["a", "d", "e", "b", "c"]);
    }

    #[test]
    fn minimal_disturbance_with_two_dependents() {
        // Both b and d need f: f lands before b (its first dependent), not
        // before d; nothing else moves.
        let keys = tables(&["a", "b", "c", "d", "e", "f"]);
        let deps = deps_from(&keys, &[("b", "f"), ("d", "f")]);
        let order = topo_sort(&keys, &deps).unwrap();
        assert_eq!(names(&keys, &order), ["a", "f", "b", "c", "d", "e"]);
    }

    #[test]
    fn satisfied_dependencies_change_nothing() {
        let keys = tables(&["a", "b", "c", "d"]);
        let deps = deps_from(&keys, &[("d", "a"), ("c", "b"), ("b", "a"), ("d", "c")]);
        let order = topo_sort(&keys, &deps).unwrap();
        assert_eq!(order, initial_order(&keys));
    }

    #[test]
    fn independent_chains_interleave_by_name() {
        // Chain x: x1 <- x2 <- x3 named a, c, e; chain y named b, d, f.
        // The sort must not group chains: names decide between them.
        let keys = tables(&["e", "a", "f", "c", "b", "d"]);
        let deps = deps_from(&keys, &[("c", "a"), ("e", "c"), ("d", "b"), ("f", "d")]);
        let order = topo_sort(&keys, &deps).unwrap();
        assert_eq!(names(&keys, &order), ["a", "b", "c", "d", "e", "f"]);

        // Two chains that run against the name order each move as little
        // as needed and still interleave: c before a, e before b.
        let keys = tables(&["a", "b", "c", "d", "e", "f"]);
        let deps = deps_from(&keys, &[("a", "c"), ("b", "e")]);
        let order = topo_sort(&keys, &deps).unwrap();
        assert_eq!(names(&keys, &order), ["c", "a", "e", "b", "d", "f"]);
    }

    #[test]
    fn duplicate_edges_are_harmless() {
        let keys = tables(&["a", "b"]);
        let deps = vec![vec![1, 1, 1], vec![]];
        assert_eq!(names(&keys, &topo_sort(&keys, &deps).unwrap()), ["b", "a"]);
    }

    #[test]
    #[should_panic(expected = "only 2 objects")]
    fn out_of_range_edge_panics() {
        let keys = tables(&["a", "b"]);
        let _ = topo_sort(&keys, &[vec![5], vec![]]);
    }

    // ---- loops -----------------------------------------------------------

    #[test]
    fn two_cycle_and_three_cycle_reported_exactly() {
        // Loops: p <-> q and x -> y -> z -> x. Bystanders: "dep" is needed by
        // a loop member (blocked, but not in a loop); "user" needs a loop
        // member; "free" is unrelated.
        let keys = tables(&["dep", "free", "p", "q", "user", "x", "y", "z"]);
        let deps = deps_from(
            &keys,
            &[
                ("p", "q"),
                ("q", "p"),
                ("x", "y"),
                ("y", "z"),
                ("z", "x"),
                ("q", "dep"),
                ("y", "dep"),
                ("user", "x"),
            ],
        );
        let loops = topo_sort(&keys, &deps).unwrap_err();
        assert_eq!(
            loop_names(&keys, &loops),
            [vec!["p", "q"], vec!["x", "y", "z"]]
        );
    }

    #[test]
    fn loop_orientation_follows_dependencies() {
        // c -> b -> a -> c, listed from its earliest member: a depends on c.
        let keys = tables(&["a", "b", "c"]);
        let deps = deps_from(&keys, &[("c", "b"), ("b", "a"), ("a", "c")]);
        let loops = topo_sort(&keys, &deps).unwrap_err();
        assert_eq!(loop_names(&keys, &loops), [vec!["a", "c", "b"]]);
    }

    #[test]
    fn self_loop() {
        let keys = tables(&["a", "t"]);
        let deps = deps_from(&keys, &[("t", "t"), ("t", "a")]);
        let loops = topo_sort(&keys, &deps).unwrap_err();
        assert_eq!(loop_names(&keys, &loops), [vec!["t"]]);
    }

    #[test]
    fn shortest_loop_is_preferred_and_all_cycle_members_covered() {
        // a -> b -> c -> a with the shortcut b -> a. From a the shortest loop
        // is a <-> b; c is only on the longer loop, which must be reported
        // too (once).
        let keys = tables(&["a", "b", "c"]);
        let deps = deps_from(&keys, &[("a", "b"), ("b", "c"), ("c", "a"), ("b", "a")]);
        let loops = topo_sort(&keys, &deps).unwrap_err();
        assert_eq!(
            loop_names(&keys, &loops),
            [vec!["a", "b"], vec!["a", "b", "c"]]
        );
    }

    #[test]
    fn figure_eight_reports_both_loops() {
        let keys = tables(&["a", "b", "c"]);
        let deps = deps_from(&keys, &[("a", "b"), ("b", "a"), ("b", "c"), ("c", "b")]);
        let loops = topo_sort(&keys, &deps).unwrap_err();
        assert_eq!(loop_names(&keys, &loops), [vec!["a", "b"], vec!["b", "c"]]);
    }

    #[test]
    fn big_cyclic_graph_loops_are_real_distinct_and_covering() {
        // A ring of 2000 objects with random chords (and a few self-loops):
        // every object is on a cycle.
        let n = 2000;
        let mut rng = Lcg(7);
        let keys: Vec<SortKey> = (0..n)
            .map(|i| key(Table, "s", &format!("t{:08x}", rng.next() ^ i as u64)))
            .collect();
        let mut deps: Vec<Vec<usize>> = (0..n).map(|i| vec![(i + 1) % n]).collect();
        for _ in 0..3000 {
            let a = rng.below(n);
            let b = rng.below(n);
            deps[a].push(b);
        }
        let start = Instant::now();
        let loops = topo_sort(&keys, &deps).unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(10), "too slow");
        let mut covered = vec![false; n];
        let mut seen = std::collections::HashSet::new();
        for l in &loops {
            assert!(seen.insert(l.clone()), "loop reported twice");
            let mut members = l.clone();
            members.sort_unstable();
            members.dedup();
            assert_eq!(members.len(), l.len(), "loop repeats a member");
            assert!(loop_intact(l, &deps), "reported loop is not a cycle");
            for &i in l {
                covered[i] = true;
            }
        }
        assert!(covered.iter().all(|&c| c), "some cycle member not reported");
    }

    // ---- repairs ---------------------------------------------------------

    #[test]
    fn repair_callback_fixes_table_check_loop() {
        // pg_dump: the table depends on its CHECK (printed inline), the CHECK
        // depends on the table (pg_depend). Repair: drop CHECK -> table.
        let mut ck = key(Constraint, "public", "t_check");
        ck.tiebreak = thin_vec::thin_vec!["1".into(), "t".into()];
        let keys = vec![key(Table, "public", "t"), ck, key(Table, "public", "u")];
        let mut deps = vec![vec![1], vec![0], vec![]];
        let mut calls = Vec::new();
        let (order, warnings) = sort_with_repairs(&keys, &mut deps, &mut |lp, deps| {
            calls.push(lp.to_vec());
            let (table, check) = (lp[0], lp[1]);
            if keys[table].kind == Table && keys[check].kind == Constraint {
                deps[check].retain(|&d| d != table);
                true
            } else {
                false
            }
        })
        .unwrap();
        assert_eq!(calls, [vec![0, 1]]);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(deps, [vec![1], vec![], vec![]]);
        assert_valid(&order, &deps);
        assert_eq!(names(&keys, &order), ["t_check", "t", "u"]);
    }

    #[test]
    fn multi_object_repair_makes_check_separate_post_data() {
        // t -> ck (inline CHECK), ck -> f (CHECK calls f), f -> t (f takes
        // t's row type): pg_dump makes the CHECK separate, so it depends on
        // the table and on the post-data boundary instead.
        let mut keys = vec![
            key(Table, "public", "t"),
            key(Constraint, "public", "ck"),
            key(Func, "public", "f"),
            key(Table, "public", "other"),
        ];
        let mut deps = vec![vec![1], vec![2, 0], vec![0], vec![]];
        let b = add_boundary_edges(&mut keys, &mut deps, |_, k| match k.kind {
            Constraint => None, // inline CHECK: travels with its table
            kind => Some(kind.section()),
        });
        let mut rounds = 0;
        let (order, warnings) = sort_with_repairs(&keys, &mut deps, &mut |lp, deps| {
            rounds += 1;
            let table = lp.iter().copied().find(|&i| keys[i].kind == Table);
            let check = lp.iter().copied().find(|&i| keys[i].kind == Constraint);
            match (table, check) {
                (Some(t), Some(c)) if lp.len() == 2 => {
                    deps[c].retain(|&d| d != t);
                    true
                }
                (Some(t), Some(c)) => {
                    deps[t].retain(|&d| d != c);
                    if !deps[c].contains(&t) {
                        deps[c].push(t);
                    }
                    deps[c].push(b.post_data);
                    true
                }
                _ => false,
            }
        })
        .unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        // Shortest loop first, as pg_dump expects: round 1 sees t <-> ck and
        // keeps the CHECK inline; round 2 sees t -> ck -> f -> t and makes it
        // separate.
        assert_eq!(rounds, 2);
        assert_valid(&order, &deps);
        let at = |name: &str| order.iter().position(|&i| &*keys[i].name == name).unwrap();
        assert!(at("t") < at("f"), "function follows the table it uses");
        assert!(at("f") < at("PRE-DATA BOUNDARY"));
        assert!(
            at("POST-DATA BOUNDARY") < at("ck"),
            "CHECK moved to post-data"
        );
    }

    #[test]
    fn refused_repair_breaks_loop_arbitrarily_with_warning() {
        let keys = tables(&["a", "b", "c"]);
        let mut deps = deps_from(&keys, &[("a", "b"), ("b", "a"), ("c", "a")]);
        let (order, warnings) = sort_with_repairs(&keys, &mut deps, &mut |_, _| false).unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("could not resolve dependency loop"));
        assert!(warnings[0].contains("TABLE public.a"));
        // As in pg_dump, the first loop member loses its edge to the second.
        assert_eq!(deps[0], Vec::<usize>::new());
        assert_valid(&order, &deps);
        assert_eq!(names(&keys, &order), ["a", "b", "c"]);
    }

    #[test]
    fn circular_table_data_gets_the_foreign_key_warning() {
        let keys = vec![key(TableData, "public", "a"), key(TableData, "public", "b")];
        let mut deps = vec![vec![1], vec![0]];
        let (order, warnings) = sort_with_repairs(&keys, &mut deps, &mut |_, _| false).unwrap();
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("circular foreign-key constraints"));
        assert_valid(&order, &deps);
    }

    #[test]
    fn self_loop_broken_when_refused() {
        let keys = tables(&["t"]);
        let mut deps = vec![vec![0]];
        let (order, warnings) = sort_with_repairs(&keys, &mut deps, &mut |_, _| false).unwrap();
        assert_eq!(order, [0]);
        assert_eq!(warnings.len(), 1);
        assert!(deps[0].is_empty());
    }

    #[test]
    fn repair_that_lies_does_not_hang() {
        let keys = tables(&["a", "b"]);
        let mut deps = vec![vec![1], vec![0]];
        let (order, warnings) = sort_with_repairs(&keys, &mut deps, &mut |_, _| true).unwrap();
        assert_valid(&order, &deps);
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("left the loop intact"));
    }

    #[test]
    fn oscillating_repair_is_cut_off() {
        // Each call really breaks the loop it is given (a <-> b) but closes
        // another (a <-> c), and the next call swaps them back, forever.
        // The round budget must end it.
        let keys = tables(&["a", "b", "c"]);
        let mut deps = vec![vec![1], vec![0], vec![]];
        let mut calls = 0usize;
        let (order, warnings) = sort_with_repairs(&keys, &mut deps, &mut |lp, deps| {
            calls += 1;
            let x = lp[1];
            let y = if x == 1 { 2 } else { 1 };
            deps[0].retain(|&d| d != x);
            deps[x].retain(|&d| d != 0);
            deps[0].push(y);
            deps[y].push(0);
            true
        })
        .unwrap();
        assert_valid(&order, &deps);
        assert!(calls > 10, "the repair was retried ({calls} calls)");
        assert!(
            warnings.iter().any(|w| w.contains("did not converge")),
            "{warnings:?}"
        );
    }

    #[test]
    fn overlapping_loops_repaired_one_per_round() {
        // a <-> b and b <-> c share b: the first round may only repair one.
        let keys = tables(&["a", "b", "c"]);
        let mut deps = deps_from(&keys, &[("a", "b"), ("b", "a"), ("b", "c"), ("c", "b")]);
        let mut seen = Vec::new();
        let (order, warnings) = sort_with_repairs(&keys, &mut deps, &mut |lp, deps| {
            seen.push(lp.to_vec());
            let (x, y) = (lp[0], lp[1]);
            deps[x].retain(|&d| d != y);
            true
        })
        .unwrap();
        assert!(warnings.is_empty());
        assert_eq!(seen, [vec![0, 1], vec![1, 2]]);
        assert_valid(&order, &deps);
    }

    #[test]
    fn malformed_graph_is_an_error_not_a_panic() {
        let keys = tables(&["a"]);
        let mut deps = vec![vec![], vec![]];
        assert!(sort_with_repairs(&keys, &mut deps, &mut |_, _| false).is_err());

        let keys = tables(&["a", "b"]);
        let mut deps = vec![vec![1], vec![0]];
        let err = sort_with_repairs(&keys, &mut deps, &mut |_, deps| {
            deps[0] = vec![99];
            true
        })
        .unwrap_err();
        assert!(err.contains("left the graph invalid"), "{err}");
    }

    // ---- boundaries ------------------------------------------------------

    #[test]
    fn boundaries_keep_sections_apart() {
        // A post-data index named first and a data item that depends on a
        // post-data object would each violate sections without the edges.
        let mut keys = vec![
            key(Index, "public", "a_idx"),
            key(Table, "public", "t"),
            key(TableData, "public", "t"),
            key(Trigger, "public", "trg"),
            key(Namespace, "", "public"),
            key(RelStats, "public", "a_idx"),
            key(Constraint, "public", "t_check"),
        ];
        let mut deps = deps_from(&keys, &[("a_idx", "t"), ("trg", "t")]);
        deps[2].push(1); // TABLE DATA t -> TABLE t
        deps[5].push(0); // index stats -> index
        let b = add_boundary_edges(&mut keys, &mut deps, |i, k| match (i, k.kind) {
            (_, Constraint) => None,
            (5, RelStats) => Some(Section::PostData), // an index's stats
            (_, kind) => Some(kind.section()),
        });
        assert_eq!(keys[b.pre_data].kind, PreDataBoundary);
        assert_eq!(keys[b.post_data].kind, PostDataBoundary);
        assert_eq!(deps[b.post_data][0], b.pre_data);
        assert!(deps[6].is_empty(), "inline constraint stays unpinned");
        let order = topo_sort(&keys, &deps).unwrap();
        assert_valid(&order, &deps);
        let pos = |i: usize| order.iter().position(|&x| x == i).unwrap();
        for (i, k) in keys.iter().enumerate().take(7) {
            let p = pos(i);
            match (i, k.kind.section()) {
                (6, _) => {}
                (5, _) | (_, Section::PostData) => assert!(p > pos(b.post_data), "{i}"),
                (_, Section::PreData) => assert!(p < pos(b.pre_data), "{i}"),
                (_, Section::Data) => {
                    assert!(pos(b.pre_data) < p && p < pos(b.post_data), "{i}")
                }
            }
        }
    }

    #[test]
    fn boundaries_on_an_empty_graph() {
        let mut keys = Vec::new();
        let mut deps = Vec::new();
        let b = add_boundary_edges(&mut keys, &mut deps, |_, k| Some(k.kind.section()));
        assert_eq!(
            b,
            Boundaries {
                pre_data: 0,
                post_data: 1
            }
        );
        assert_eq!(topo_sort(&keys, &deps).unwrap(), [0, 1]);
    }

    // ---- scale, reference and determinism --------------------------------

    /// Random DAG: objects get random kinds and names; each depends on up to
    /// `fanout` objects of lower hidden rank, so there are no cycles.
    fn random_dag(seed: u64, n: usize, fanout: usize) -> (Vec<SortKey>, Vec<Vec<usize>>) {
        let mut rng = Lcg(seed);
        let kinds: Vec<ObjectKind> = ObjectKind::ALL
            .iter()
            .copied()
            .filter(|k| !matches!(k, PreDataBoundary | PostDataBoundary))
            .collect();
        let keys: Vec<SortKey> = (0..n)
            .map(|i| {
                let mut k = key(
                    kinds[rng.below(kinds.len())],
                    ["", "public", "app"][rng.below(3)],
                    &format!("o{:04x}", rng.next() & 0xfff),
                );
                k.oid = 16384 + i as u32;
                k
            })
            .collect();
        let mut rank: Vec<usize> = (0..n).collect();
        rng.shuffle(&mut rank);
        let mut by_rank = vec![0; n];
        for (i, &r) in rank.iter().enumerate() {
            by_rank[r] = i;
        }
        let deps = (0..n)
            .map(|i| {
                if rank[i] == 0 {
                    return Vec::new();
                }
                (0..rng.below(fanout + 1))
                    .map(|_| by_rank[rng.below(rank[i])])
                    .collect()
            })
            .collect();
        (keys, deps)
    }

    #[test]
    fn large_random_dag_sorts_validly_and_fast() {
        let (keys, deps) = random_dag(42, 2000, 6);
        let start = Instant::now();
        let order = topo_sort(&keys, &deps).unwrap();
        let elapsed = start.elapsed();
        assert_valid(&order, &deps);
        assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
    }

    #[test]
    fn heap_sort_matches_reference_rule() {
        for seed in 1..=20 {
            let (keys, deps) = random_dag(seed, 60, 3);
            let order = topo_sort(&keys, &deps).unwrap();
            assert_eq!(Some(order), reference_sort(&keys, &deps), "seed {seed}");
        }
    }

    #[test]
    fn same_input_same_output() {
        let (keys, deps) = random_dag(99, 500, 4);
        let a = topo_sort(&keys, &deps).unwrap();
        let b = topo_sort(&keys.clone(), &deps.clone()).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn input_order_does_not_matter() {
        // The same objects and edges, listed in another order, must print the
        // same sequence: the order is a function of the schema, not of the
        // catalog scan order.
        let (keys, deps) = random_dag(5, 400, 4);
        let mut perm: Vec<usize> = (0..keys.len()).collect();
        Lcg(11).shuffle(&mut perm);
        let mut inv = vec![0; perm.len()];
        for (new, &old) in perm.iter().enumerate() {
            inv[old] = new;
        }
        let keys2: Vec<SortKey> = perm.iter().map(|&old| keys[old].clone()).collect();
        let deps2: Vec<Vec<usize>> = perm
            .iter()
            .map(|&old| deps[old].iter().map(|&d| inv[d]).collect())
            .collect();
        let a: Vec<&SortKey> = topo_sort(&keys, &deps)
            .unwrap()
            .into_iter()
            .map(|i| &keys[i])
            .collect();
        let b: Vec<&SortKey> = topo_sort(&keys2, &deps2)
            .unwrap()
            .into_iter()
            .map(|i| &keys2[i])
            .collect();
        assert_eq!(a, b);
    }

    #[test]
    fn loop_report_is_deterministic() {
        let keys = tables(&["a", "b", "c", "d", "e"]);
        let deps = deps_from(
            &keys,
            &[
                ("a", "c"),
                ("c", "e"),
                ("e", "a"),
                ("b", "d"),
                ("d", "b"),
                ("c", "a"),
            ],
        );
        let first = topo_sort(&keys, &deps).unwrap_err();
        for _ in 0..5 {
            assert_eq!(topo_sort(&keys, &deps).unwrap_err(), first);
        }
    }
}
