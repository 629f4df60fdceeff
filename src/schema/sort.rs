//! Minimal stand-in for the dependency sorter (a stable Kahn sort by kind
//! and name); the full pg_dump-style sorter with loop detection replaces it.

/// Kinds of dumpable objects, in pg_dump's priority order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKind {
    Namespace,
    Type,
    Func,
    Table,
    TableAttach,
    Constraint,
    Index,
    IndexAttach,
    Rule,
    FkConstraint,
    RefreshMatview,
    EventTrigger,
}

/// pg_dump's sections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    PreData,
    Data,
    PostData,
}

impl ObjectKind {
    pub fn section(&self) -> Section {
        match self {
            ObjectKind::Constraint
            | ObjectKind::Index
            | ObjectKind::IndexAttach
            | ObjectKind::Rule
            | ObjectKind::FkConstraint
            | ObjectKind::RefreshMatview
            | ObjectKind::EventTrigger => Section::PostData,
            _ => Section::PreData,
        }
    }
}

/// What orders objects before dependencies are considered.
#[derive(Debug, Clone)]
pub struct SortKey {
    pub kind: ObjectKind,
    pub namespace: String,
    pub name: String,
    pub tiebreak: Vec<String>,
    pub oid: u32,
}

type Repair<'a> = dyn FnMut(&[usize], &mut Vec<Vec<usize>>) -> bool + 'a;

/// Order objects so each follows what it depends on; ties by kind and name.
pub fn sort_with_repairs(
    keys: &[SortKey],
    deps: &mut [Vec<usize>],
    _repair: &mut Repair<'_>,
) -> Result<(Vec<usize>, Vec<String>), String> {
    let n = keys.len();
    let mut idx: Vec<usize> = (0..n).collect();
    let k = |i: usize| {
        (
            keys[i].kind,
            &keys[i].namespace,
            &keys[i].name,
            &keys[i].tiebreak,
            keys[i].oid,
        )
    };
    idx.sort_by(|&a, &b| k(a).cmp(&k(b)));
    let mut done = vec![false; n];
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let next = idx
            .iter()
            .copied()
            .find(|&i| !done[i] && deps[i].iter().all(|&d| done[d]));
        match next {
            Some(i) => {
                done[i] = true;
                out.push(i);
            }
            None => return Err("dependency loop among schema objects".into()),
        }
    }
    Ok((out, Vec::new()))
}
