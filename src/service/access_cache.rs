//! Who a Bearer token is, and what a user is in a project, remembered between requests with
//! exact invalidation.
//!
//! Every entry carries the store's access generation ([`crate::store::writer::Generation`])
//! as read BEFORE the store read it was built from, and is used only while the generation
//! has not moved. The store's writer moves it after committing any change to a user, an API
//! token, a membership or a project, before that change is answered: so once a revoke, a
//! delete, a demotion or a removal has been answered, the very next request reads the store
//! again and gets 401/403/404. Expired or unknown tokens are never remembered.
//!
//! A remembered token user is a shared [`Caller`]: a hit hands the request a reference count,
//! not a copy of the user, and the user's own `GET /api/user` answer is kept beside them once
//! rendered (`Services::own_view`), living and dying with the entry.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::model::{Project, ProjectId, Role, SecretHash, User, UserId};

/// Most entries a map holds; when full, stale entries go, and if none were stale, all.
const MAX_ENTRIES: usize = 4096;

/// An authenticated user as a request carries them (see the module docs).
#[derive(Debug)]
pub struct Caller {
    user: User,
    /// The user's own `GET /api/user` answer, and the data generation the rest of it was read
    /// at (`None` when it depends on the user alone).
    own_view: Mutex<Option<(Option<u64>, Bytes)>>,
}

impl Caller {
    /// `user`, as just read from the store.
    #[must_use]
    pub fn new(user: User) -> Self {
        Self {
            user,
            own_view: Mutex::new(None),
        }
    }

    /// The user.
    #[must_use]
    pub fn user(&self) -> &User {
        &self.user
    }

    /// The own answer kept for `generation`.
    pub(super) fn kept_view(&self, generation: Option<u64>) -> Option<Bytes> {
        let kept = self
            .own_view
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        kept.as_ref()
            .filter(|(g, _)| *g == generation)
            .map(|(_, view)| view.clone())
    }

    /// Keeps the own answer `view`, rendered from data read at `generation`; an answer read
    /// at a newer generation is never replaced by an older one.
    pub(super) fn keep_view(&self, generation: Option<u64>, view: Bytes) {
        let mut kept = self
            .own_view
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !matches!(&*kept, Some((g, _)) if *g > generation) {
            *kept = Some((generation, view));
        }
    }
}

/// The remembered answers (see the module docs).
#[derive(Debug, Default)]
pub struct AccessCache {
    tokens: Map<SecretHash, Arc<Caller>>,
    members: Map<(UserId, ProjectId), (Project, Option<Role>)>,
}

impl AccessCache {
    /// The user of the token hashed to `hash`, as read at `generation`.
    #[must_use]
    pub fn token_user(&self, hash: &SecretHash, generation: u64) -> Option<Arc<Caller>> {
        self.tokens.get(hash, generation)
    }

    /// Remembers `caller` for `hash`, read from the store at `generation`.
    pub fn keep_token_user(&self, hash: SecretHash, generation: u64, caller: &Arc<Caller>) {
        self.tokens.put(hash, generation, Arc::clone(caller));
    }

    /// Project `project` and `user`'s role in it, as read at `generation`.
    #[must_use]
    pub fn membership(
        &self,
        user: UserId,
        project: ProjectId,
        generation: u64,
    ) -> Option<(Project, Option<Role>)> {
        self.members.get(&(user, project), generation)
    }

    /// Remembers a project and `user`'s role in it, read from the store at `generation`.
    pub fn keep_membership(
        &self,
        user: UserId,
        generation: u64,
        project: &Project,
        role: Option<Role>,
    ) {
        self.members
            .put((user, project.id), generation, (project.clone(), role));
    }
}

/// One map of entries tagged with the generation they were read at.
#[derive(Debug)]
struct Map<K, V>(Mutex<HashMap<K, (u64, V)>>);

impl<K, V> Default for Map<K, V> {
    fn default() -> Self {
        Self(Mutex::new(HashMap::new()))
    }
}

impl<K: Eq + Hash, V: Clone> Map<K, V> {
    fn get(&self, key: &K, generation: u64) -> Option<V> {
        let map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(key)
            .filter(|(g, _)| *g == generation)
            .map(|(_, v)| v.clone())
    }

    fn put(&self, key: K, generation: u64, value: V) {
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= MAX_ENTRIES && !map.contains_key(&key) {
            map.retain(|_, (g, _)| *g == generation);
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
        }
        // An entry read at a newer generation is never replaced by an older one.
        match map.get(&key) {
            Some((g, _)) if *g > generation => {}
            _ => {
                map.insert(key, (generation, value));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_lives_only_at_its_generation() {
        let map: Map<u8, &str> = Map::default();
        map.put(1, 5, "a");
        assert_eq!(map.get(&1, 5), Some("a"));
        assert_eq!(map.get(&1, 6), None);
        map.put(1, 4, "old");
        assert_eq!(map.get(&1, 5), Some("a"));
        map.put(1, 6, "b");
        assert_eq!(map.get(&1, 6), Some("b"));
    }

    #[test]
    fn an_own_view_lives_only_at_its_generation() {
        let caller = Caller::new(User {
            id: 1,
            created: 0,
            username: "u".into(),
            name: "u".into(),
            email: "u@x".into(),
            admin: false,
            external: false,
            alert: false,
            password_hash: String::new(),
        });
        assert_eq!(caller.kept_view(Some(3)), None);
        caller.keep_view(Some(3), Bytes::from_static(b"a"));
        assert_eq!(caller.kept_view(Some(3)), Some(Bytes::from_static(b"a")));
        assert_eq!(caller.kept_view(Some(4)), None);
        assert_eq!(caller.kept_view(None), None);
        caller.keep_view(Some(2), Bytes::from_static(b"old"));
        assert_eq!(caller.kept_view(Some(3)), Some(Bytes::from_static(b"a")));
        let plain = Caller::new(caller.user().clone());
        plain.keep_view(None, Bytes::from_static(b"b"));
        assert_eq!(plain.kept_view(None), Some(Bytes::from_static(b"b")));
        assert_eq!(plain.kept_view(Some(3)), None);
    }

    #[test]
    fn a_full_map_drops_stale_entries_first() {
        let map: Map<usize, usize> = Map::default();
        for i in 0..MAX_ENTRIES {
            map.put(i, u64::from(i % 2 == 0), i);
        }
        map.put(MAX_ENTRIES, 1, 0);
        assert_eq!(map.get(&0, 1), Some(0));
        assert_eq!(map.get(&1, 0), None);
        assert!(map.0.lock().unwrap().len() <= MAX_ENTRIES / 2 + 1);
    }
}
