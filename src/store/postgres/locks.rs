//! Lock holder rows and fences for [`PgStore`]: one row per holder, (name, agent_id) its key. The
//! writes are held for the next round trip (see `held`); a sole writer remembers rows and fences
//! across transactions (see `cache`).

use super::held::Param;
use super::{lock_from, rows, PgStore};
use crate::store::{LockRow, StoreResult};

impl PgStore {
    pub(super) fn pg_lock_holders(&mut self, name: &str) -> StoreResult<Vec<LockRow>> {
        if let Some(rows) = self.cache.holders(name) {
            return Ok(rows.clone());
        }
        let r =
            self.run(async { Ok(self.client.query(&self.st.lock_holders, &[&name]).await?) })?;
        let rows = rows(r, lock_from)?;
        self.cache.remember_holders(name, &rows);
        Ok(rows)
    }

    pub(super) fn pg_lock_put(&mut self, l: &LockRow) -> StoreResult<()> {
        let params: Vec<Param> = vec![
            Box::new(l.name.clone()),
            Box::new(l.agent_id.clone()),
            Box::new(l.token.clone()),
            Box::new(l.fence),
            Box::new(l.expires_at),
            Box::new(l.shared),
            Box::new(l.limit),
        ];
        self.defer(&self.st.lock_put, params)?;
        self.cache.put(l);
        Ok(())
    }

    pub(super) fn pg_lock_delete_holder(&mut self, name: &str, agent_id: &str) -> StoreResult<()> {
        let params: Vec<Param> = vec![Box::new(name.to_string()), Box::new(agent_id.to_string())];
        self.defer(&self.st.lock_delete_holder, params)?;
        self.cache.delete_holder(name, agent_id);
        Ok(())
    }

    pub(super) fn pg_lock_delete(&mut self, name: &str) -> StoreResult<()> {
        self.defer(&self.st.lock_delete, vec![Box::new(name.to_string())])?;
        self.cache.delete(name);
        Ok(())
    }

    /// The next fence of `name`. Remembered (see `cache`): the last one plus one, written as a
    /// held write the server checks (the stored fence must be exactly the last one: one row
    /// changed, or the batch fails); otherwise one round trip.
    pub(super) fn pg_fence_next(&mut self, name: &str) -> StoreResult<i64> {
        if let Some(last) = self.cache.fence(name) {
            let next = last + 1;
            let params: Vec<Param> = vec![Box::new(name.to_string()), Box::new(next)];
            self.defer(&self.st.fence_advance, params)?;
            self.cache.remember_fence(name, next);
            return Ok(next);
        }
        let next: i64 = self.run(async {
            let row = self.client.query_one(&self.st.fence_next, &[&name]).await?;
            Ok(row.try_get(0)?)
        })?;
        self.cache.remember_fence(name, next);
        Ok(next)
    }

    pub(super) fn pg_lock_list(&mut self) -> StoreResult<Vec<LockRow>> {
        let r = self.run(async { Ok(self.client.query(&self.st.lock_list, &[]).await?) })?;
        rows(r, lock_from)
    }

    pub(super) fn pg_locks_held_by(&mut self, agent_id: &str) -> StoreResult<Vec<LockRow>> {
        let r = self.run(async {
            Ok(self
                .client
                .query(&self.st.locks_held_by, &[&agent_id])
                .await?)
        })?;
        rows(r, lock_from)
    }
}
