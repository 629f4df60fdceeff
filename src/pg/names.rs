//! A list of texts held in one allocation: a table's columns and their
//! types, kept for every table through the whole run, and a schema step's
//! statements (`schema::Statements`, this same type). As a `Vec<String>` a
//! list of three or four names costs five allocations and about 200 bytes;
//! at 25,000 tables the three lists of each were 15 MB, and the script's
//! 250,000 statements in 145,000 steps 400,000 small allocations.
//!
//! May not touch: any session (it is a container).

use std::fmt;

/// Texts, each followed by a NUL: no identifier, type name or SQL text
/// PostgreSQL hands out holds one (its `text` type refuses the byte), so
/// where one ends is never ambiguous.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct NameList {
    text: Box<str>,
}

impl NameList {
    /// The names, in order.
    pub fn iter(&self) -> std::str::SplitTerminator<'_, char> {
        self.into_iter()
    }

    pub fn len(&self) -> usize {
        self.text.bytes().filter(|&b| b == 0).count()
    }

    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    pub fn to_vec(&self) -> Vec<String> {
        self.iter().map(str::to_string).collect()
    }

    pub fn first(&self) -> Option<&str> {
        self.iter().next()
    }

    /// The texts' bytes and one byte after each: the length of
    /// [`joined`](Self::joined) plus one, without building it.
    pub fn text_len(&self) -> usize {
        self.text.len()
    }

    /// The texts as one, each followed by a newline but the last: for
    /// statements, what a session runs.
    pub fn joined(&self) -> String {
        let mut out = String::with_capacity(self.text.len());
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

    /// Add a text at the end. Each push reallocates, to the exact size:
    /// the schema loaders build an object's statements one at a time.
    ///
    /// # Panics
    /// On a text holding a NUL, which no catalog text can.
    pub fn push(&mut self, text: impl AsRef<str>) {
        let text = text.as_ref();
        assert!(!text.contains('\0'), "a text holds a NUL: {text:?}");
        let mut all = String::from(std::mem::take(&mut self.text));
        all.reserve_exact(text.len() + 1);
        all.push_str(text);
        all.push('\0');
        self.text = all.into_boxed_str();
    }

    /// Put a text at position `i` (at the end when `i` is past it).
    pub fn insert(&mut self, i: usize, text: impl AsRef<str>) {
        let old = std::mem::take(self);
        let mut all: Vec<&str> = old.iter().collect();
        all.insert(i.min(all.len()), text.as_ref());
        *self = all.into_iter().collect();
    }

    /// Replace text `i`, when there is one.
    pub fn set(&mut self, i: usize, text: impl AsRef<str>) {
        let mut n = 0;
        let text = text.as_ref();
        self.rewrite(|_| {
            n += 1;
            (n - 1 == i).then(|| text.to_string())
        });
    }

    /// Keep only the texts for which `keep` holds.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        if self.iter().all(&mut keep) {
            return;
        }
        *self = self.iter().filter(|s| keep(s)).collect();
    }

    /// Replace the texts for which `f` gives a new one.
    pub fn rewrite(&mut self, mut f: impl FnMut(&str) -> Option<String>) {
        let mut changed = false;
        let rebuilt: NameList = self
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

impl<S: AsRef<str>> Extend<S> for NameList {
    fn extend<I: IntoIterator<Item = S>>(&mut self, iter: I) {
        let mut iter = iter.into_iter().peekable();
        if iter.peek().is_none() {
            return;
        }
        let rest: NameList = iter.collect();
        let mut all = String::from(std::mem::take(&mut self.text));
        all.push_str(&rest.text);
        self.text = all.into_boxed_str();
    }
}

impl std::ops::Index<usize> for NameList {
    type Output = str;
    /// # Panics
    /// When there are `i` texts or fewer.
    fn index(&self, i: usize) -> &str {
        self.iter().nth(i).expect("text index out of range")
    }
}

impl<'a> IntoIterator for &'a NameList {
    type Item = &'a str;
    type IntoIter = std::str::SplitTerminator<'a, char>;

    fn into_iter(self) -> Self::IntoIter {
        self.text.split_terminator('\0')
    }
}

impl<S: AsRef<str>> FromIterator<S> for NameList {
    /// # Panics
    /// On a text holding a NUL, which no catalog text can.
    fn from_iter<I: IntoIterator<Item = S>>(names: I) -> Self {
        let mut text = String::new();
        for n in names {
            let n = n.as_ref();
            assert!(!n.contains('\0'), "a text holds a NUL: {n:?}");
            text.push_str(n);
            text.push('\0');
        }
        NameList {
            text: text.into_boxed_str(),
        }
    }
}

impl From<Vec<String>> for NameList {
    fn from(names: Vec<String>) -> Self {
        names.iter().collect()
    }
}

impl fmt::Debug for NameList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Written as a list of strings, as the `Vec<String>` it replaced.
impl serde::Serialize for NameList {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> serde::Deserialize<'de> for NameList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let names = Vec::<String>::deserialize(d)?;
        if let Some(n) = names.iter().find(|n| n.contains('\0')) {
            return Err(serde::de::Error::custom(format!(
                "a text holds a NUL: {n:?}"
            )));
        }
        Ok(names.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_names_in_order_with_empty_and_unicode_ones() {
        let l: NameList = ["id", "", "note é", "a,b"].into_iter().collect();
        assert_eq!(l.len(), 4);
        assert_eq!(l.iter().collect::<Vec<_>>(), ["id", "", "note é", "a,b"]);
        assert!(NameList::default().is_empty());
        assert_eq!(NameList::default().iter().count(), 0);
    }

    #[test]
    fn statements_keep_their_order_and_boundaries() {
        let s: NameList = ["CREATE TABLE a ();", "", "SELECT ';\n';"]
            .into_iter()
            .collect();
        assert_eq!(s.len(), 3);
        assert_eq!(&s[2], "SELECT ';\n';");
        assert_eq!(s.first(), Some("CREATE TABLE a ();"));
        assert_eq!(s.joined(), "CREATE TABLE a ();\n\nSELECT ';\n';");
        assert_eq!(s.text_len(), s.joined().len() + 1);
        assert_eq!(NameList::default().joined(), "");
        // One empty text is not none.
        let one: NameList = [""].into_iter().collect();
        assert_eq!(one.len(), 1);
        assert!(!one.is_empty());
    }

    #[test]
    fn edits_change_only_what_they_select() {
        let mut s: NameList = ["a;", "b;", "c;"].into_iter().collect();
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
    fn serializes_as_a_list_of_strings() {
        let l = NameList::from(vec!["a".to_string(), "b c".to_string()]);
        let json = serde_json::to_string(&l).unwrap();
        assert_eq!(json, r#"["a","b c"]"#);
        assert_eq!(serde_json::from_str::<NameList>(&json).unwrap(), l);
        assert!(serde_json::from_str::<NameList>(r#"["a\u0000b"]"#).is_err());
        assert_eq!(format!("{l:?}"), r#"["a", "b c"]"#);
    }
}
