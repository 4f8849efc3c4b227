//! Parts of the spec that most objects leave empty, held as a pointer when
//! set and as nothing when empty. Every decoded WhatsAppNumber holds three
//! sets of pod overrides, 224 bytes each, mostly empty; a [`Sparse`] of
//! them takes 8. It reads, writes and compares as the part itself.

use std::fmt;
use std::ops::{Deref, DerefMut};

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A type with an empty value that [`Sparse`] stands for when unset.
pub trait Empty: Default + PartialEq + 'static {
    /// The empty value, as `Default` makes it.
    fn empty() -> &'static Self;
}

/// A `T` that holds nothing while it is empty.
pub struct Sparse<T>(Option<Box<T>>);

impl<T: Empty> Sparse<T> {
    pub fn new(value: T) -> Self {
        Self(Some(Box::new(value)).filter(|v| **v != *T::empty()))
    }
}

impl<T> Default for Sparse<T> {
    fn default() -> Self {
        Self(None)
    }
}

impl<T: Empty> Deref for Sparse<T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.0.as_deref().unwrap_or_else(|| T::empty())
    }
}

/// Writing through it sets it: it holds a value from then on, even an empty one.
impl<T: Empty> DerefMut for Sparse<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.0.get_or_insert_with(Box::default)
    }
}

impl<T: Empty + Clone> Clone for Sparse<T> {
    fn clone(&self) -> Self {
        Self::new((**self).clone())
    }
}

impl<T: Empty> PartialEq for Sparse<T> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<T: Empty + fmt::Debug> fmt::Debug for Sparse<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

impl<T: Empty + Serialize> Serialize for Sparse<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(serializer)
    }
}

impl<'de, T: Empty + Deserialize<'de>> Deserialize<'de> for Sparse<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer).map(Self::new)
    }
}

impl<T: Empty + JsonSchema> JsonSchema for Sparse<T> {
    fn inline_schema() -> bool {
        T::inline_schema()
    }
    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }
    fn schema_id() -> std::borrow::Cow<'static, str> {
        T::schema_id()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        T::json_schema(generator)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::PodOverrides;

    #[test]
    fn an_empty_part_holds_nothing_and_reads_as_empty() {
        let read: Sparse<PodOverrides> = serde_json::from_str("{}").unwrap();
        assert!(read.0.is_none());
        assert_eq!(*read, PodOverrides::default());
        assert_eq!(serde_json::to_string(&read).unwrap(), "{}");
        assert_eq!(read, Sparse::default());
        assert!(Sparse::new(PodOverrides::default()).0.is_none());
    }

    #[test]
    fn a_set_part_reads_writes_and_compares_as_itself() {
        let read: Sparse<PodOverrides> =
            serde_json::from_str(r#"{"nodeSelector": {"zone": "a"}, "priorityClassName": "high"}"#).unwrap();
        assert!(read.0.is_some());
        assert_eq!(read.node_selector.get("zone").map(String::as_str), Some("a"));
        assert_eq!(
            serde_json::to_value(&read).unwrap(),
            serde_json::json!({"nodeSelector": {"zone": "a"}, "priorityClassName": "high"})
        );
        assert_ne!(read, Sparse::default());
        let mut written = Sparse::<PodOverrides>::default();
        let through: &mut PodOverrides = &mut written;
        through.priority_class_name = Some("high".into());
        through.node_selector.insert("zone".into(), "a".into());
        assert_eq!(written, read);
        assert!(written.clone().0.is_some());
        let mut emptied = read.clone();
        *emptied = PodOverrides::default();
        assert_eq!(emptied, Sparse::default(), "compares as what it holds");
        assert!(emptied.clone().0.is_none(), "a copy of an empty part holds nothing");
    }
}
