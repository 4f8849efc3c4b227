//! The caches' storage: what a watch delivered, found by namespace and name.
//!
//! kube-runtime's reflector store keys each object by an `ObjectRef`, which
//! repeats its name, namespace, uid and resource version, and keeps objects
//! that carry a whole `ObjectMeta` (360 bytes before any of its strings). A
//! store here keys an object by itself: what a cache keeps of one can be as
//! small as what the operator reads of it, and its namespace is shared with
//! every other object of that namespace ([`crate::interned::intern`]).

use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, RwLock};

use hashbrown::HashTable;
use kube::runtime::watcher;

/// An object as a store keeps it: it tells its own namespace and name.
pub trait Keyed: Send + Sync + 'static {
    /// Empty for a cluster-scoped object.
    fn key_namespace(&self) -> &str;
    fn key_name(&self) -> &str;
}

/// Objects of one kind by namespace and name, fed by one watch.
pub struct Store<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for Store<T> {
    fn clone(&self) -> Self {
        Self { shared: self.shared.clone() }
    }
}

struct Shared<T> {
    tables: RwLock<Tables<T>>,
    hasher: RandomState,
    /// Becomes true once the first listing is complete, and stays.
    ready: tokio::sync::watch::Sender<bool>,
}

struct Tables<T> {
    live: HashTable<Arc<T>>,
    /// What a listing under way has delivered so far: it replaces `live`
    /// once complete, so a relist also drops what was deleted meanwhile.
    listing: Option<HashTable<Arc<T>>>,
}

impl<T: Keyed> Default for Store<T> {
    fn default() -> Self {
        let tables = Tables { live: HashTable::new(), listing: None };
        let (ready, _) = tokio::sync::watch::channel(false);
        Self { shared: Arc::new(Shared { tables: RwLock::new(tables), hasher: RandomState::new(), ready }) }
    }
}

impl<T: Keyed> Store<T> {
    fn hash(&self, namespace: &str, name: &str) -> u64 {
        self.shared.hasher.hash_one((namespace, name))
    }

    /// Whether the first listing is complete.
    #[cfg(test)]
    fn is_ready(&self) -> bool {
        *self.shared.ready.borrow()
    }

    /// Waits for the first complete listing.
    pub async fn wait_until_ready(&self) {
        let mut ready = self.shared.ready.subscribe();
        // The sender lives as long as the store: an error cannot happen here.
        let _ = ready.wait_for(|r| *r).await;
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<T>> {
        let tables = self.shared.tables.read().expect("store lock");
        let found =
            tables.live.find(self.hash(namespace, name), |o| o.key_namespace() == namespace && o.key_name() == name);
        found.cloned()
    }

    /// Every object that `keep` accepts.
    pub fn filter(&self, keep: impl Fn(&T) -> bool) -> Vec<Arc<T>> {
        let tables = self.shared.tables.read().expect("store lock");
        tables.live.iter().filter(|o| keep(o)).cloned().collect()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shared.tables.read().expect("store lock").live.len()
    }

    /// Takes in a watch event; returns the object it applied or deleted.
    pub fn apply(&self, event: watcher::Event<T>) -> Option<Arc<T>> {
        let mut tables = self.shared.tables.write().expect("store lock");
        let hasher = &self.shared.hasher;
        let hash_of = |o: &Arc<T>| hasher.hash_one((o.key_namespace(), o.key_name()));
        match event {
            watcher::Event::Init => {
                tables.listing = Some(HashTable::new());
                None
            }
            watcher::Event::InitApply(obj) => {
                let obj = Arc::new(obj);
                let hash = hash_of(&obj);
                let listing = tables.listing.get_or_insert_with(HashTable::new);
                insert(listing, hash, obj.clone(), hash_of);
                Some(obj)
            }
            watcher::Event::InitDone => {
                if let Some(mut listed) = tables.listing.take() {
                    listed.shrink_to_fit(hash_of);
                    tables.live = listed;
                }
                drop(tables);
                self.shared.ready.send_replace(true);
                None
            }
            watcher::Event::Apply(obj) => {
                let obj = Arc::new(obj);
                let hash = hash_of(&obj);
                insert(&mut tables.live, hash, obj.clone(), hash_of);
                Some(obj)
            }
            watcher::Event::Delete(obj) => {
                let obj = Arc::new(obj);
                let hash = hash_of(&obj);
                if let Ok(entry) = tables
                    .live
                    .find_entry(hash, |o| o.key_namespace() == obj.key_namespace() && o.key_name() == obj.key_name())
                {
                    entry.remove();
                }
                Some(obj)
            }
        }
    }
}

fn insert<T: Keyed>(table: &mut HashTable<Arc<T>>, hash: u64, obj: Arc<T>, hash_of: impl Fn(&Arc<T>) -> u64) {
    match table.entry(hash, |o| o.key_namespace() == obj.key_namespace() && o.key_name() == obj.key_name(), hash_of) {
        hashbrown::hash_table::Entry::Occupied(mut known) => *known.get_mut() = obj,
        hashbrown::hash_table::Entry::Vacant(place) => {
            place.insert(obj);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interned::intern;

    #[derive(Debug, PartialEq)]
    struct Named(Arc<str>, &'static str, u32);

    impl Keyed for Named {
        fn key_namespace(&self) -> &str {
            &self.0
        }
        fn key_name(&self) -> &str {
            self.1
        }
    }

    fn named(namespace: &str, name: &'static str, version: u32) -> Named {
        Named(intern(namespace), name, version)
    }

    #[tokio::test]
    async fn a_store_is_ready_once_its_first_listing_is_complete() {
        let store = Store::default();
        store.apply(watcher::Event::Init);
        store.apply(watcher::Event::InitApply(named("team", "a", 1)));
        assert!(!store.is_ready());
        assert_eq!(store.get("team", "a"), None, "not before the listing is complete");
        store.apply(watcher::Event::InitDone);
        assert!(store.is_ready());
        tokio::time::timeout(std::time::Duration::from_secs(1), store.wait_until_ready()).await.expect("ready");
        assert_eq!(store.get("team", "a").as_deref(), Some(&named("team", "a", 1)));
    }

    #[test]
    fn objects_are_found_by_namespace_and_name_and_replaced_by_their_next_version() {
        let store = Store::default();
        store.apply(watcher::Event::Init);
        store.apply(watcher::Event::InitDone);
        let applied = store.apply(watcher::Event::Apply(named("team", "a", 1)));
        assert_eq!(applied.as_deref(), Some(&named("team", "a", 1)), "the object applied is handed on");
        store.apply(watcher::Event::Apply(named("other", "a", 1)));
        store.apply(watcher::Event::Apply(named("team", "a", 2)));
        assert_eq!(store.len(), 2);
        assert_eq!(store.get("team", "a").map(|o| o.2), Some(2));
        assert_eq!(store.get("other", "a").map(|o| o.2), Some(1));
        assert_eq!(store.get("team", "b"), None);
        let deleted = store.apply(watcher::Event::Delete(named("team", "a", 2)));
        assert_eq!(deleted.map(|o| o.2), Some(2), "a deletion is handed on too");
        assert_eq!(store.get("team", "a"), None);
        let mut left: Vec<_> = store.filter(|_| true).iter().map(|o| o.0.to_string()).collect();
        left.sort();
        assert_eq!(left, ["other"]);
    }

    #[test]
    fn a_relist_drops_what_it_did_not_list() {
        let store = Store::default();
        store.apply(watcher::Event::Init);
        store.apply(watcher::Event::InitApply(named("team", "a", 1)));
        store.apply(watcher::Event::InitApply(named("team", "b", 1)));
        store.apply(watcher::Event::InitDone);
        store.apply(watcher::Event::Init);
        store.apply(watcher::Event::InitApply(named("team", "b", 2)));
        assert_eq!(store.get("team", "a").map(|o| o.2), Some(1), "the old listing answers until the new one is done");
        store.apply(watcher::Event::InitDone);
        assert_eq!(store.get("team", "a"), None, "deleted while the watch was down");
        assert_eq!(store.get("team", "b").map(|o| o.2), Some(2));
        assert!(store.is_ready());
    }
}
