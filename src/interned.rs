//! Strings that many kept objects share: a namespace, a component label, a
//! condition's type, status or reason. One copy of each is kept for the
//! process; every holder keeps a reference to it.

use std::collections::HashSet;
use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, LazyLock, Mutex};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// How many distinct strings are shared at most. The values interned come
/// from a small vocabulary (the operator's own words, the namespaces it
/// watches); should an object bring more (a status edited by hand), what is
/// beyond this bound is kept by its holder alone, and nothing grows for good.
const CAPACITY: usize = 4096;

/// The one copy of `value` that every holder shares.
pub fn intern(value: &str) -> Arc<str> {
    static SHARED: LazyLock<Vocabulary> = LazyLock::new(|| Vocabulary::new(CAPACITY));
    SHARED.intern(value)
}

/// Strings shared, up to a bound.
struct Vocabulary {
    values: Mutex<HashSet<Arc<str>>>,
    capacity: usize,
}

impl Vocabulary {
    fn new(capacity: usize) -> Self {
        Self { values: Mutex::default(), capacity }
    }

    fn intern(&self, value: &str) -> Arc<str> {
        let mut values = self.values.lock().expect("interned strings lock");
        if let Some(known) = values.get(value) {
            return known.clone();
        }
        let new: Arc<str> = Arc::from(value);
        if values.len() < self.capacity {
            values.insert(new.clone());
        }
        new
    }
}

/// A short string of a small vocabulary, shared (see [`intern`]): it
/// serializes as the string itself, and compares with `&str`.
#[derive(Clone, PartialEq, Eq)]
pub struct Word(Arc<str>);

impl Word {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shared copy itself, for holders that keep it beside this word.
    pub fn shared(&self) -> Arc<str> {
        self.0.clone()
    }
}

impl Deref for Word {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Word {
    fn from(value: &str) -> Self {
        Self(intern(value))
    }
}

impl From<String> for Word {
    fn from(value: String) -> Self {
        Self(intern(&value))
    }
}

impl PartialEq<str> for Word {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for Word {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl PartialEq<Word> for &str {
    fn eq(&self, other: &Word) -> bool {
        *self == &*other.0
    }
}

impl fmt::Display for Word {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Word {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl Serialize for Word {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Word {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = Word;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Word, E> {
                Ok(Word::from(value))
            }
        }
        // Read in place where the input allows it: no copy is made of a word
        // already shared.
        deserializer.deserialize_str(Visit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_strings_share_one_copy() {
        let (a, b) = (intern("team-interned"), intern(&String::from("team-interned")));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &intern("other-interned")));
    }

    #[test]
    fn a_word_reads_and_writes_as_its_string_and_is_shared_once_read() {
        let read: Vec<Word> = serde_json::from_str(r#"["Ready","Ready","True"]"#).unwrap();
        assert!(Arc::ptr_eq(&read[0].0, &read[1].0));
        assert!(Arc::ptr_eq(&read[0].0, &Word::from("Ready").0));
        assert_eq!(read[2], "True");
        assert!("True" == read[2]);
        assert_eq!(read[2].as_str(), "True");
        assert_eq!(serde_json::to_string(&read).unwrap(), r#"["Ready","Ready","True"]"#);
        assert_eq!(format!("{} {:?}", read[0], read[0]), r#"Ready "Ready""#);
        assert!(serde_json::from_str::<Word>("1").is_err());
    }

    #[test]
    fn beyond_its_capacity_a_string_is_kept_by_its_holder_alone() {
        let words = Vocabulary::new(2);
        let first = words.intern("Ready");
        assert!(Arc::ptr_eq(&first, &words.intern("Ready")));
        words.intern("Stalled");
        let (a, b) = (words.intern("Degraded"), words.intern("Degraded"));
        assert_eq!(a, b);
        assert!(!Arc::ptr_eq(&a, &b), "not shared once the set is full");
        assert!(Arc::ptr_eq(&first, &words.intern("Ready")), "what was shared stays shared");
    }
}
