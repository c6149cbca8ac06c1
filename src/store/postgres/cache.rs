//! Lock rows and fences remembered across transactions, for a store that is the state's only
//! writer (`PgStore::sole_writer`): the coordinator's, whose connection holds the coordinator
//! lock for as long as it lives, so no other daemon's engine writes `airlock.locks` or
//! `airlock.lock_fences` meanwhile. With the writes held for the next round trip (`held`), an
//! uncontended lock and its unlock then cost no round trip of their own: the batch's COMMIT
//! carries them.
//!
//! What keeps it true:
//! - every lock row this store writes updates the entry of its name (a name it has not read is
//!   left out: the cache knows a name whole or not at all);
//! - anything undone (a step rolled back to its savepoint, a transaction rolled back, a commit
//!   that failed) forgets everything, and the next reads go to the tables;
//! - a fence taken from the cache is written as "the stored fence was exactly the one before",
//!   checked by the server at the next round trip: a fence that moved under the store (a hand
//!   edit, a second writer) fails the batch rather than being issued twice;
//! - at most [`MAX_NAMES`] names each: past that, the map starts again empty.
//!
//! Without `sole_writer` (tests that write the tables beside the store) nothing is remembered.

use std::collections::HashMap;

use crate::store::LockRow;

/// Names remembered, in each map, before it is emptied.
pub(super) const MAX_NAMES: usize = 4096;

#[derive(Debug, Default)]
pub(super) struct Cache {
    on: bool,
    /// Every holder row of each name (expired ones too), lowest fence first: what
    /// `lock_holders` would read.
    holders: HashMap<String, Vec<LockRow>>,
    /// The last fence issued for each name.
    fences: HashMap<String, i64>,
}

impl Cache {
    pub(super) fn enable(&mut self) {
        self.on = true;
    }

    /// Forgets everything: something this store wrote was undone.
    pub(super) fn forget(&mut self) {
        self.holders.clear();
        self.fences.clear();
    }

    /// Every holder row of `name`, if remembered.
    pub(super) fn holders(&self, name: &str) -> Option<&Vec<LockRow>> {
        self.holders.get(name)
    }

    /// The last fence issued for `name`, if remembered.
    pub(super) fn fence(&self, name: &str) -> Option<i64> {
        self.fences.get(name).copied()
    }

    pub(super) fn remember_holders(&mut self, name: &str, rows: &[LockRow]) {
        if !self.on {
            return;
        }
        if self.holders.len() >= MAX_NAMES && !self.holders.contains_key(name) {
            self.holders.clear();
        }
        self.holders.insert(name.to_string(), rows.to_vec());
    }

    pub(super) fn remember_fence(&mut self, name: &str, fence: i64) {
        if !self.on {
            return;
        }
        if self.fences.len() >= MAX_NAMES && !self.fences.contains_key(name) {
            self.fences.clear();
        }
        self.fences.insert(name.to_string(), fence);
    }

    /// `row` was written (inserted, or replacing its agent's row).
    pub(super) fn put(&mut self, row: &LockRow) {
        let Some(rows) = self.holders.get_mut(&row.name) else {
            return;
        };
        match rows.iter_mut().find(|r| r.agent_id == row.agent_id) {
            Some(r) => *r = row.clone(),
            None => rows.push(row.clone()),
        }
        rows.sort_by_key(|r| r.fence);
    }

    pub(super) fn delete_holder(&mut self, name: &str, agent_id: &str) {
        if let Some(rows) = self.holders.get_mut(name) {
            rows.retain(|r| r.agent_id != agent_id);
        }
    }

    pub(super) fn delete(&mut self, name: &str) {
        // None left: known whole.
        self.remember_holders(name, &[]);
    }
}
