//! Lock holder rows for [`PgStore`]: one row per holder, (name, agent_id) its key. The writes are
//! held for the next round trip (see `held`).

use super::held::Param;
use super::{lock_from, rows, PgStore};
use crate::store::{LockRow, StoreResult};

impl PgStore {
    pub(super) fn pg_lock_holders(&mut self, name: &str) -> StoreResult<Vec<LockRow>> {
        let r =
            self.run(async { Ok(self.client.query(&self.st.lock_holders, &[&name]).await?) })?;
        rows(r, lock_from)
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
        self.defer(&self.st.lock_put, params)
    }

    pub(super) fn pg_lock_delete_holder(&mut self, name: &str, agent_id: &str) -> StoreResult<()> {
        let params: Vec<Param> = vec![Box::new(name.to_string()), Box::new(agent_id.to_string())];
        self.defer(&self.st.lock_delete_holder, params)
    }

    pub(super) fn pg_lock_delete(&mut self, name: &str) -> StoreResult<()> {
        self.defer(&self.st.lock_delete, vec![Box::new(name.to_string())])
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
