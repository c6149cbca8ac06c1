//! Lock holder rows for [`PgStore`]: one row per holder, (name, agent_id) its key.

use super::{lock_from, rows, PgStore};
use crate::store::{LockRow, StoreResult};

impl PgStore {
    pub(super) fn pg_lock_holders(&mut self, name: &str) -> StoreResult<Vec<LockRow>> {
        let r =
            self.run(async { Ok(self.client.query(&self.st.lock_holders, &[&name]).await?) })?;
        rows(r, lock_from)
    }

    pub(super) fn pg_lock_put(&mut self, l: &LockRow) -> StoreResult<()> {
        self.run(async {
            self.client
                .execute(
                    &self.st.lock_put,
                    &[
                        &l.name,
                        &l.agent_id,
                        &l.token,
                        &l.fence,
                        &l.expires_at,
                        &l.shared,
                        &l.limit,
                    ],
                )
                .await?;
            Ok(())
        })
    }

    pub(super) fn pg_lock_delete_holder(&mut self, name: &str, agent_id: &str) -> StoreResult<()> {
        self.run(async {
            self.client
                .execute(&self.st.lock_delete_holder, &[&name, &agent_id])
                .await?;
            Ok(())
        })
    }

    pub(super) fn pg_lock_delete(&mut self, name: &str) -> StoreResult<()> {
        self.run(async {
            self.client.execute(&self.st.lock_delete, &[&name]).await?;
            Ok(())
        })
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
