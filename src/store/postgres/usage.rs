//! The storage quota's gauge on PostgreSQL: `airlock.usage` (migration 4) holds the bytes the
//! state takes, kept by triggers in the same transactions as the writes; the coordinator reads it
//! in the round trip of each COMMIT, so the gauge costs no round trip of its own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio_postgres::{Client, SimpleQueryMessage};

use super::{held, PgStore};
use crate::store::StoreResult;

const READ: &str = "SELECT bytes FROM airlock.usage";

/// The bytes in use now (for the gauge's first value).
pub(super) async fn read(client: &Client) -> StoreResult<u64> {
    let row = client.query_opt(READ, &[]).await?;
    Ok(row
        .map(|r| r.try_get::<_, i64>(0))
        .transpose()?
        .map_or(0, |b| b.max(0) as u64))
}

/// A fresh gauge holding `bytes`.
pub(super) fn gauge(bytes: u64) -> Arc<AtomicU64> {
    Arc::new(AtomicU64::new(bytes))
}

impl PgStore {
    /// COMMIT, reading the gauge just before it in the same round trip (the transaction sees its
    /// own writes, so the figure is the one this commit makes true), and writing the history
    /// entries the transaction made just before that, in the same round trip too.
    pub(super) fn commit_measured(&self, history: &super::history::Pending) -> StoreResult<()> {
        let sql = format!("{READ}; COMMIT");
        let answer = self.run(async {
            let commit = self.client.simple_query(&sql);
            match self.history_write(history) {
                // Both are sent on the first poll, the INSERT first (a prepared statement goes
                // out at once); if the server refuses it, the transaction is aborted and the
                // COMMIT's READ fails with it, so nothing commits; if it cannot even be sent, the
                // COMMIT is not sent either (see `held::in_order`).
                Some(insert) => {
                    let insert: held::Sending<'_> = Box::pin(async move {
                        insert.await?;
                        Ok(())
                    });
                    let (inserted, answer) = held::in_order(vec![insert], commit).await;
                    if let Some(Some(Err(e))) = inserted.into_iter().next() {
                        return Err(e);
                    }
                    Ok(answer.expect("sent once the INSERT was")?)
                }
                None => Ok(commit.await?),
            }
        })?;
        let bytes = answer.iter().find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).and_then(|v| v.parse::<i64>().ok()),
            _ => None,
        });
        match bytes {
            Some(b) => self.usage.store(b.max(0) as u64, Ordering::Relaxed),
            // Someone emptied the table by hand: the commit stands; the quota cannot be measured.
            None => tracing::warn!(
                "airlock.usage has no row: the storage quota cannot be measured (restore the row: \
                 see README, Storage quota)"
            ),
        }
        Ok(())
    }
}
