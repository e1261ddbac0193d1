//! Who a Bearer token is, and what a user is in a project, remembered between requests with
//! exact invalidation.
//!
//! Every entry carries the store's access generation ([`crate::store::writer::Generation`])
//! as read BEFORE the store read it was built from, and is used only while the generation
//! has not moved. The store's writer moves it after committing any change to a user, an API
//! token, a membership or a project, before that change is answered: so once a revoke, a
//! delete, a demotion or a removal has been answered, the very next request reads the store
//! again and gets 401/403/404. Expired or unknown tokens are never remembered.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

use crate::model::{Project, ProjectId, Role, SecretHash, User, UserId};

/// Most entries a map holds; when full, stale entries go, and if none were stale, all.
const MAX_ENTRIES: usize = 4096;

/// The remembered answers (see the module docs).
#[derive(Debug, Default)]
pub struct AccessCache {
    tokens: Map<SecretHash, User>,
    members: Map<(UserId, ProjectId), (Project, Option<Role>)>,
}

impl AccessCache {
    /// The user of the token hashed to `hash`, as read at `generation`.
    #[must_use]
    pub fn token_user(&self, hash: &SecretHash, generation: u64) -> Option<User> {
        self.tokens.get(hash, generation)
    }

    /// Remembers `user` for `hash`, read from the store at `generation`.
    pub fn keep_token_user(&self, hash: SecretHash, generation: u64, user: &User) {
        self.tokens.put(hash, generation, user.clone());
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
