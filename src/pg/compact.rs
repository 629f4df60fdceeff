//! Rows kept after their read: a catalog answer the schema load must hold
//! whole (every column of every relation, looked up per relation) costs a
//! tokio-postgres `Row` each, with a range per field and a share of the
//! connection's read buffer: about 400 bytes for a column's row. A
//! [`CompactRow`] keeps the fields' bytes in one allocation and their ends
//! in another, and reads them back with the same `FromSql` decoding.
//!
//! May not touch: any session (it only holds bytes already read).

use std::sync::Arc;

use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::Row;

/// One row's fields, as the server sent them (binary format).
pub(crate) struct CompactRow {
    /// The columns' types, shared by every row of one read.
    types: Arc<[Type]>,
    /// Every field's bytes, one after another.
    data: Box<[u8]>,
    /// Field `i` ends at `ends[i]`; a NULL ends where it starts, and is
    /// told apart by `nulls`.
    ends: Box<[u32]>,
    /// Bit `i` set: field `i` is NULL (reads with more than 64 columns are
    /// not kept this way).
    nulls: u64,
}

/// A field's position (`usize` only, so a literal index needs no suffix).
pub(crate) trait FieldIndex {
    fn index(self) -> usize;
}

impl FieldIndex for usize {
    fn index(self) -> usize {
        self
    }
}

/// A field's bytes as they came, whatever its type.
struct Raw<'a>(Option<&'a [u8]>);

impl<'a> FromSql<'a> for Raw<'a> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(Some(raw)))
    }

    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(None))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// The column types of `row`, to share among the rows of its read.
pub(crate) fn types_of(row: &Row) -> Arc<[Type]> {
    row.columns().iter().map(|c| c.type_().clone()).collect()
}

impl CompactRow {
    /// `row`'s fields; `types` from [`types_of`] on a row of the same read.
    ///
    /// # Panics
    /// On a row of more than 64 columns (a bug: the reads kept this way
    /// are the loader's own).
    pub(crate) fn new(row: &Row, types: &Arc<[Type]>) -> Self {
        let n = row.len();
        assert!(n <= 64, "a compact row holds at most 64 fields, not {n}");
        let fields: Vec<Option<&[u8]>> = (0..n).map(|i| row.get::<_, Raw>(i).0).collect();
        let size = fields.iter().flatten().map(|f| f.len()).sum();
        let mut data = Vec::with_capacity(size);
        let mut ends = Vec::with_capacity(n);
        let mut nulls = 0u64;
        for (i, f) in fields.iter().enumerate() {
            match f {
                Some(bytes) => data.extend_from_slice(bytes),
                None => nulls |= 1 << i,
            }
            ends.push(data.len() as u32);
        }
        CompactRow {
            types: types.clone(),
            data: data.into_boxed_slice(),
            ends: ends.into_boxed_slice(),
            nulls,
        }
    }

    /// Field `idx` decoded as `T`, as [`Row::get`] does.
    ///
    /// # Panics
    /// When `idx` is out of range or the field does not decode as `T`
    /// (a bug in the query or the reader, as with [`Row::get`]).
    pub(crate) fn get<'a, I, T>(&'a self, idx: I) -> T
    where
        I: FieldIndex,
        T: FromSql<'a>,
    {
        let i = idx.index();
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        let raw = (self.nulls & (1 << i) == 0).then(|| &self.data[start..self.ends[i] as usize]);
        let ty = &self.types[i];
        match T::from_sql_nullable(ty, raw) {
            Ok(v) => v,
            Err(e) => panic!("field {i} of type {ty} does not decode as asked: {e}"),
        }
    }
}
