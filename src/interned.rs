//! Strings that many kept objects share: a namespace, a component label, a
//! condition's type, status, reason or message. One copy of each is kept
//! for the process; every holder keeps a reference to it.

use std::collections::HashSet;
use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, LazyLock, Mutex};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Strings shared before the first sweep (see [`Vocabulary`]).
const FIRST_SWEEP: usize = 4096;

/// The one copy of `value` that every holder shares.
pub fn intern(value: &str) -> Arc<str> {
    static SHARED: LazyLock<Vocabulary> = LazyLock::new(|| Vocabulary::new(FIRST_SWEEP));
    SHARED.intern(value)
}

/// Strings shared while someone holds them. Most come from a small
/// vocabulary (the operator's own words and messages, the namespaces it
/// watches), but a message may name its number, and a status edited by
/// hand may bring anything: once the set has doubled since its last sweep,
/// the strings only the set still holds are dropped. It keeps at most twice
/// what is in use, and a sweep costs its size once per as many insertions.
struct Vocabulary {
    values: Mutex<Shared>,
    first_sweep: usize,
}

struct Shared {
    set: HashSet<Arc<str>>,
    sweep_at: usize,
}

impl Vocabulary {
    fn new(first_sweep: usize) -> Self {
        Self { values: Mutex::new(Shared { set: HashSet::new(), sweep_at: first_sweep }), first_sweep }
    }

    fn intern(&self, value: &str) -> Arc<str> {
        let mut values = self.values.lock().expect("interned strings lock");
        if let Some(known) = values.set.get(value) {
            return known.clone();
        }
        if values.set.len() >= values.sweep_at {
            // A count of one is the set's own reference, and no other can
            // be made while the lock is held.
            values.set.retain(|v| Arc::strong_count(v) > 1);
            values.set.shrink_to_fit();
            values.sweep_at = self.first_sweep.max(2 * values.set.len());
        }
        let new: Arc<str> = Arc::from(value);
        values.set.insert(new.clone());
        new
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.values.lock().unwrap().set.len()
    }
}

/// A string many holders have alike, shared (see [`intern`]): it
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
    fn a_sweep_drops_what_only_the_vocabulary_holds() {
        let words = Vocabulary::new(2);
        let kept = words.intern("Ready");
        words.intern("gone");
        assert_eq!(words.len(), 2);
        let third = words.intern("Degraded");
        assert_eq!(words.len(), 2, "full at two: a sweep dropped \"gone\" before adding a third");
        assert!(Arc::ptr_eq(&kept, &words.intern("Ready")), "what is held stays shared");
        assert!(Arc::ptr_eq(&third, &words.intern("Degraded")));
        let many: Vec<Arc<str>> = (0..10).map(|i| words.intern(&format!("message {i}"))).collect();
        assert_eq!(words.len(), 12, "all held: each sweep found nothing to drop and waited for twice as many");
        drop(many);
        for i in 0..4 {
            words.intern(&format!("after {i}"));
        }
        assert_eq!(words.len(), 16, "no sweep until the set doubled since the last one, at 8");
        words.intern("after 4");
        assert_eq!(words.len(), 3, "the sweep at 16 kept what is held, and added the new one");
        assert!(Arc::ptr_eq(&kept, &words.intern("Ready")));
    }
}
