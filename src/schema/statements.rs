//! A step's statements, held in one allocation.
//!
//! A 25,000-table schema has about 250,000 statements in 145,000 steps.
//! Held as a `Vec<String>` each, that was a list buffer per step and a
//! string per statement, 400,000 small allocations made during the schema
//! load among objects freed right after: a tenth of the run's peak memory
//! in headers, and the rest scattered over pages the allocator could not
//! give back. Here a step's statements are one boxed `str`, each statement
//! ended by a NUL byte, which no SQL text PostgreSQL hands out can hold
//! (its `text` refuses the byte), so the end of a statement is never
//! ambiguous. A pure data type: no SQL is built or run here.

use std::fmt;

/// The byte ending each statement.
const END: char = '\0';

/// Statements, in order, in one allocation (see the module's doc).
///
/// Serialized as a list of strings, as the `Vec<String>` it replaced, so
/// archives and tokens keep their format.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Statements(Box<str>);

impl Statements {
    pub fn new() -> Self {
        Self::default()
    }

    /// Each statement, in order.
    pub fn iter(&self) -> std::str::SplitTerminator<'_, char> {
        self.0.split_terminator(END)
    }

    pub fn len(&self) -> usize {
        self.0.bytes().filter(|&b| b == 0).count()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn first(&self) -> Option<&str> {
        self.iter().next()
    }

    /// The statements' bytes and one byte after each: the length of
    /// [`joined`](Self::joined) plus one, without building it.
    pub fn text_len(&self) -> usize {
        self.0.len()
    }

    /// The statements as one text, each followed by a newline but the last:
    /// what a session runs.
    pub fn joined(&self) -> String {
        let mut out = String::with_capacity(self.0.len());
        self.push_joined(&mut out);
        out
    }

    /// [`joined`](Self::joined), appended to `out`.
    pub fn push_joined(&self, out: &mut String) {
        for (i, s) in self.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            out.push_str(s);
        }
    }

    /// Add a statement at the end (the loaders build an object's
    /// statements one at a time: each push reallocates, to the exact size).
    ///
    /// # Panics
    /// When the statement holds a NUL byte, which SQL text cannot hold.
    pub fn push(&mut self, statement: impl AsRef<str>) {
        let statement = statement.as_ref();
        assert!(!statement.contains(END), "a SQL statement holds a NUL byte");
        let mut text = String::from(std::mem::take(&mut self.0));
        text.reserve_exact(statement.len() + 1);
        text.push_str(statement);
        text.push(END);
        self.0 = text.into_boxed_str();
    }

    /// Put a statement at position `i` (at the end when `i` is past it).
    pub fn insert(&mut self, i: usize, statement: impl AsRef<str>) {
        let rest = std::mem::take(self);
        let statement = statement.as_ref();
        let mut new: Vec<&str> = rest.iter().collect();
        new.insert(i.min(new.len()), statement);
        *self = new.into_iter().collect();
    }

    /// Replace statement `i`, when there is one.
    pub fn set(&mut self, i: usize, statement: impl AsRef<str>) {
        let mut n = 0;
        let statement = statement.as_ref();
        self.rewrite(|_| {
            n += 1;
            (n - 1 == i).then(|| statement.to_string())
        });
    }

    /// Keep only the statements for which `keep` holds.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        if self.iter().all(&mut keep) {
            return;
        }
        *self = self.iter().filter(|s| keep(s)).collect();
    }

    /// Replace the statements for which `f` gives a new text.
    pub fn rewrite(&mut self, mut f: impl FnMut(&str) -> Option<String>) {
        let mut changed = false;
        let rebuilt: Statements = self
            .iter()
            .map(|s| match f(s) {
                Some(n) => {
                    changed = true;
                    std::borrow::Cow::Owned(n)
                }
                None => std::borrow::Cow::Borrowed(s),
            })
            .collect();
        if changed {
            *self = rebuilt;
        }
    }
}

impl<S: AsRef<str>> FromIterator<S> for Statements {
    /// # Panics
    /// When a statement holds a NUL byte, which SQL text cannot hold.
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Self {
        let mut text = String::new();
        for s in iter {
            let s = s.as_ref();
            assert!(!s.contains(END), "a SQL statement holds a NUL byte");
            text.push_str(s);
            text.push(END);
        }
        Statements(text.into_boxed_str())
    }
}

impl<S: AsRef<str>> Extend<S> for Statements {
    fn extend<I: IntoIterator<Item = S>>(&mut self, iter: I) {
        let mut iter = iter.into_iter().peekable();
        if iter.peek().is_none() {
            return;
        }
        let rest: Statements = iter.collect();
        let mut text = String::from(std::mem::take(&mut self.0));
        text.push_str(&rest.0);
        self.0 = text.into_boxed_str();
    }
}

impl<'a> IntoIterator for &'a Statements {
    type Item = &'a str;
    type IntoIter = std::str::SplitTerminator<'a, char>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl std::ops::Index<usize> for Statements {
    type Output = str;
    /// # Panics
    /// When there are `i` statements or fewer.
    fn index(&self, i: usize) -> &str {
        self.iter().nth(i).expect("statement index out of range")
    }
}

impl fmt::Debug for Statements {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl serde::Serialize for Statements {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> serde::Deserialize<'de> for Statements {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let list = Vec::<String>::deserialize(d)?;
        if list.iter().any(|s| s.contains(END)) {
            return Err(serde::de::Error::custom("a SQL statement holds a NUL byte"));
        }
        Ok(list.iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_keep_their_order_and_boundaries() {
        let s: Statements = ["CREATE TABLE a ();", "", "SELECT ';\n';"]
            .into_iter()
            .collect();
        assert_eq!(s.len(), 3);
        assert_eq!(
            s.iter().collect::<Vec<_>>(),
            ["CREATE TABLE a ();", "", "SELECT ';\n';"]
        );
        assert_eq!(&s[2], "SELECT ';\n';");
        assert_eq!(s.first(), Some("CREATE TABLE a ();"));
        assert_eq!(s.joined(), "CREATE TABLE a ();\n\nSELECT ';\n';");
        assert!(Statements::new().is_empty());
        assert_eq!(Statements::new().len(), 0);
        assert_eq!(Statements::new().joined(), "");
        // One empty statement is not none.
        let one: Statements = [""].into_iter().collect();
        assert_eq!(one.len(), 1);
        assert!(!one.is_empty());
    }

    #[test]
    fn retain_and_rewrite_change_only_what_they_select() {
        let mut s: Statements = ["a;", "b;", "c;"].into_iter().collect();
        s.retain(|q| q != "b;");
        assert_eq!(s.iter().collect::<Vec<_>>(), ["a;", "c;"]);
        s.rewrite(|q| (q == "c;").then(|| "see;".to_string()));
        assert_eq!(s.iter().collect::<Vec<_>>(), ["a;", "see;"]);
        s.push("b;");
        s.insert(0, "z;");
        s.extend(["c;", "d;"]);
        s.insert(99, "e;");
        s.extend(Vec::<String>::new());
        assert_eq!(
            s.iter().collect::<Vec<_>>(),
            ["z;", "a;", "see;", "b;", "c;", "d;", "e;"]
        );
        s.retain(|q| q != "e;");
        s.set(1, "a; -- first");
        s.set(9, "no tenth statement");
        assert_eq!(&s[1], "a; -- first");
        assert_eq!(s.len(), 6);
        s.retain(|_| false);
        assert!(s.is_empty());
    }

    #[test]
    fn serialized_as_the_list_it_was() {
        let s: Statements = ["x;", "y;"].into_iter().collect();
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, r#"["x;","y;"]"#);
        assert_eq!(serde_json::from_str::<Statements>(&json).unwrap(), s);
        assert_eq!(format!("{s:?}"), r#"["x;", "y;"]"#);
        // A damaged archive cannot smuggle in a boundary.
        let err = serde_json::from_str::<Statements>(r#"["a;\u0000b;"]"#).unwrap_err();
        assert!(err.to_string().contains("NUL"), "{err}");
    }
}
