//! Task rows for [`PgStore`]: the writes of a task's life, a claim and a finish one statement
//! each.

use super::held::Param;
use super::{check_text, rows, task_from, PgStore};
use crate::clock::Millis;
use crate::store::{Finish, Finished, Lease, StoreResult, TaskRow};

impl PgStore {
    pub(super) fn pg_task_update(&mut self, t: &TaskRow) -> StoreResult<()> {
        if let Some(e) = &t.last_error {
            check_text("the task's error", e)?;
        }
        if let Some(r) = &t.result {
            check_text("the task's result", r)?;
        }
        // Held for the next round trip (see `held`).
        let params: Vec<Param> = vec![
            Box::new(t.id),
            Box::new(t.state.as_str()),
            Box::new(t.attempts),
            Box::new(t.lease_agent.clone()),
            Box::new(t.lease_token.clone()),
            Box::new(t.lease_expires_at),
            Box::new(t.finished_at),
            Box::new(t.ready_at),
            Box::new(t.last_error.clone()),
            Box::new(t.result.clone()),
        ];
        self.defer(&self.st.task_update, params)
    }

    pub(super) fn pg_task_claim_next(
        &mut self,
        queue: &str,
        now: Millis,
        lease: &Lease<'_>,
    ) -> StoreResult<Option<TaskRow>> {
        let r = self.run(async {
            Ok(self
                .client
                .query(
                    &self.st.task_claim_next,
                    &[
                        &queue,
                        &now,
                        &lease.agent_id,
                        &lease.token,
                        &lease.expires_at,
                    ],
                )
                .await?)
        })?;
        Ok(rows(r, task_from)?.pop())
    }

    pub(super) fn pg_task_finish(
        &mut self,
        id: i64,
        lease_token: &str,
        now: Millis,
        to: Finish,
        note: Option<&str>,
    ) -> StoreResult<Option<Finished>> {
        let (st, field) = match to {
            Finish::Completed => (&self.st.task_complete, "the task's result"),
            Finish::Failed => (&self.st.task_fail, "the task's error"),
        };
        if let Some(n) = note {
            check_text(field, n)?;
        }
        let row = self.run(async {
            Ok(self
                .client
                .query_opt(st, &[&id, &lease_token, &now, &note])
                .await?)
        })?;
        row.map(|r| {
            Ok(Finished {
                queue: r.try_get(0)?,
                agent_id: r.try_get(1)?,
            })
        })
        .transpose()
    }
}
