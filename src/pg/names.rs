//! A short list of names held in one allocation: a table's columns and
//! their types, kept for every table through the whole run. As a
//! `Vec<String>` a list of three or four names costs five allocations and
//! about 200 bytes; at 25,000 tables the three lists of each were 15 MB.
//!
//! May not touch: any session (it is a container).

use std::fmt;

/// Names, each followed by a NUL: no identifier or type name holds one
/// (PostgreSQL's text cannot).
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
    /// On a name holding a NUL, which no catalog name can.
    fn from_iter<I: IntoIterator<Item = S>>(names: I) -> Self {
        let mut text = String::new();
        for n in names {
            let n = n.as_ref();
            assert!(!n.contains('\0'), "a name holds a NUL: {n:?}");
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
                "a name holds a NUL: {n:?}"
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
    fn serializes_as_a_list_of_strings() {
        let l = NameList::from(vec!["a".to_string(), "b c".to_string()]);
        let json = serde_json::to_string(&l).unwrap();
        assert_eq!(json, r#"["a","b c"]"#);
        assert_eq!(serde_json::from_str::<NameList>(&json).unwrap(), l);
        assert!(serde_json::from_str::<NameList>(r#"["a\u0000b"]"#).is_err());
        assert_eq!(format!("{l:?}"), r#"["a", "b c"]"#);
    }
}
