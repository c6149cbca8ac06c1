//! The audit history, written by every capability through [`Tx::record`]: an entry goes into
//! the store inside the step that made it happen, so a step rolled back (or a batch that does not
//! commit) leaves no entry, and every committed grant, release, renewal, task change and signal
//! has one. Entries past the [`Retention`] are pruned as they are written and every minute.

use super::{Reply, Tx};
use crate::clock::Millis;
use crate::core::history::{
    parse_since, HistoryEntry, HistoryKind, HistoryPage, Retention, Why, HISTORY_ERROR_CHARS,
};
use crate::core::request::GetHistory;
use crate::core::types::*;
use crate::store::{HistoryQuery, HistoryRow};

/// The retention, and how many entries were written since the last prune.
#[derive(Debug, Default)]
pub(super) struct HistoryLog {
    pub(super) retention: Retention,
    since_prune: u64,
}

impl HistoryLog {
    pub(super) fn new(retention: Retention) -> HistoryLog {
        HistoryLog {
            retention,
            since_prune: 0,
        }
    }
}

/// What one entry says besides its kind and name.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Said<'a> {
    pub(super) agent: Option<&'a str>,
    /// A fence, a task id, or a generation.
    pub(super) number: Option<i64>,
    pub(super) why: Option<Why>,
    /// A failed attempt's error.
    pub(super) error: Option<&'a str>,
}

impl<'a> Said<'a> {
    pub(super) fn by(agent: &'a str, number: i64) -> Said<'a> {
        Said {
            agent: Some(agent),
            number: Some(number),
            ..Said::default()
        }
    }

    pub(super) fn because(mut self, why: Why) -> Said<'a> {
        self.why = Some(why);
        self
    }

    pub(super) fn saying(mut self, error: Option<&'a str>) -> Said<'a> {
        self.error = error;
        self
    }
}

impl Tx<'_> {
    /// Writes one history entry in this step, and prunes when the retention's share is due.
    pub(super) fn record(&mut self, kind: HistoryKind, name: &str, said: Said) -> CoreResult<()> {
        let row = HistoryRow {
            id: 0,
            at: self.now(),
            kind: kind.as_str().to_string(),
            name: name.to_string(),
            agent_id: said.agent.map(str::to_string),
            number: said.number,
            reason: said.why.map(|w| w.as_str().to_string()),
            error: said
                .error
                .map(|e| e.chars().take(HISTORY_ERROR_CHARS).collect()),
        };
        self.db(|s| s.history_append(&row))?;
        self.history.since_prune += 1;
        if self.history.since_prune >= self.history.retention.prune_every() {
            let now = self.now();
            prune(self, now)?;
        }
        Ok(())
    }
}

/// Deletes the entries the retention no longer keeps (at the housekeeping tick too).
pub(super) fn prune(tx: &mut Tx, now: Millis) -> CoreResult<()> {
    tx.history.since_prune = 0;
    let Retention {
        max_age_ms,
        max_entries,
    } = tx.history.retention;
    tx.db(|s| s.history_prune(now - max_age_ms, max_entries))?;
    Ok(())
}

pub(super) fn get_history(tx: &mut Tx, r: GetHistory, reply: Reply<HistoryPage>) {
    let out = read(tx, r);
    tx.respond(reply, out)
}

fn read(tx: &mut Tx, r: GetHistory) -> CoreResult<HistoryPage> {
    let since = match &r.since {
        Some(s) => Some(parse_since("since", s, tx.now())?),
        None => None,
    };
    let q = HistoryQuery {
        name: r.name,
        agent_id: r.agent_id,
        kind: r.kind,
        since,
        before: r.cursor.as_deref().and_then(|c| c.parse().ok()),
        // Checked requests carry their limit.
        limit: r.limit.map_or(1, |n| n.max(1) as usize),
    };
    let (rows, next) = tx.db(|s| s.history_page(&q))?;
    Ok(HistoryPage {
        items: rows
            .into_iter()
            .filter_map(HistoryEntry::from_row)
            .collect(),
        next_cursor: next.map(|id| id.to_string()),
    })
}
