//! Lock rows: reading a lock's holders as they see it, whether a mode is admitted, granting,
//! refreshing, finding the holder a proof names. These touch only the store (through a [`Tx`]);
//! the lines of waiters and who is next are [`super::locks`]'s.
//!
//! A lock has one row per holder: an exclusive lock one, a shared lock or a semaphore as many as
//! hold it together, each with its own token and fence. One agent holds a name once.

use super::history::Said;
use super::{new_token, tokens_equal, Deadline, Orphan, Tx};
use crate::clock::{seconds_left, Millis};
use crate::core::history::HistoryKind;
use crate::core::types::*;
use crate::store::LockRow;

/// The holders of `name` now, oldest grant first; expired rows count as absent.
pub(super) fn live_holders(tx: &mut Tx, name: &str) -> CoreResult<Vec<LockRow>> {
    let now = tx.now();
    let mut rows = tx.db(|s| s.lock_holders(name))?;
    rows.retain(|l| l.expires_at > now);
    Ok(rows)
}

/// Whether a newcomer asking for `mode` may hold the name beside `holders` (none of them its
/// own): exclusive only alone; shared beside shared holders only, and under the limit.
pub(super) fn admits(holders: &[LockRow], mode: LockMode) -> bool {
    if !mode.shared {
        return holders.is_empty();
    }
    if holders.iter().any(|h| !h.shared) {
        return false;
    }
    mode.limit
        .is_none_or(|n| i64::try_from(holders.len()).unwrap_or(i64::MAX) < n)
}

/// The holder a caller waits on: the one whose expiry comes first.
pub(super) fn first_to_expire(holders: &[LockRow]) -> Option<&LockRow> {
    holders.iter().min_by_key(|h| h.expires_at)
}

/// Extends a hold its agent already has: same token, same fence.
pub(super) fn refresh(tx: &mut Tx, mut row: LockRow, ttl_ms: Millis) -> CoreResult<LockRow> {
    row.expires_at = refreshed_expiry(tx.now() + ttl_ms);
    tx.db(|s| s.lock_put(&row))?;
    tx.record(
        HistoryKind::Renew,
        &row.name,
        Said::by(&row.agent_id, row.fence),
    )?;
    tx.schedule(row.expires_at, Deadline::LockExpiry(row.name.clone()));
    Ok(row)
}

/// A hold [`grant`] wrote: its name, token and fence.
pub(super) type NewHold = (String, String, i64);

/// A grant's expiry for a TTL ending at `at`: even, and `at` or the millisecond before.
///
/// A refresh's is odd ([`refreshed_expiry`]), so a hold still has the expiry its grant wrote
/// only if nothing refreshed it since, even within the same millisecond: an undelivered grant
/// is given back only then (`Locks::release_orphan`), since a refresh (the agent taking the
/// lock again, or renewing it) means its agent was told it holds it. Either way a hold ends at
/// most 1 ms before the TTL asked, never after.
pub(super) fn granted_expiry(at: Millis) -> Millis {
    at & !1
}

/// A refresh's expiry for a TTL ending at `at`: odd, and `at` or the millisecond before.
pub(super) fn refreshed_expiry(at: Millis) -> Millis {
    (at - 1) | 1
}

/// Writes new holds of `names` (each in its mode) for `agent_id`, one token and fence each,
/// all expiring at the instant returned.
pub(super) fn grant(
    tx: &mut Tx,
    agent_id: &str,
    names: &[(String, LockMode)],
    ttl_ms: Millis,
) -> CoreResult<(Millis, Vec<NewHold>)> {
    let expires_at = granted_expiry(tx.now() + ttl_ms);
    let mut out = Vec::with_capacity(names.len());
    for (name, mode) in names {
        let fence = tx.db(|s| s.fence_next(name))?;
        let row = LockRow {
            name: name.clone(),
            agent_id: agent_id.to_string(),
            token: new_token("lk"),
            fence,
            expires_at,
            shared: mode.shared,
            limit: mode.limit,
        };
        tx.db(|s| s.lock_put(&row))?;
        tx.record(HistoryKind::Grant, name, Said::by(agent_id, fence))?;
        tx.schedule(expires_at, Deadline::LockExpiry(name.clone()));
        // Never the token: logs are read by people who must not be able to release the lock.
        tracing::info!(lock = %name, agent = %agent_id, fence, ttl_ms, "granted");
        out.push((row.name, row.token, fence));
    }
    Ok((expires_at, out))
}

/// Grants a whole set (names the agent already holds are refreshed, keeping their tokens).
pub(super) fn grant_set(
    tx: &mut Tx,
    agent_id: &str,
    names: &[String],
    modes: &[LockMode],
    ttl_ms: Millis,
) -> CoreResult<(LockSetOutcome, Orphan)> {
    let now = tx.now();
    let mut tokens = std::collections::BTreeMap::new();
    let mut fences = std::collections::BTreeMap::new();
    let mut fresh = Vec::new();
    for (n, mode) in names.iter().zip(modes) {
        match own_hold(tx, n, agent_id)? {
            Some(l) => {
                let l = refresh(tx, l, ttl_ms)?;
                tokens.insert(l.name.clone(), l.token);
                fences.insert(l.name, l.fence);
            }
            None => fresh.push((n.clone(), *mode)),
        }
    }
    let mut orphan = Vec::new();
    let (expires_at, granted) = grant(tx, agent_id, &fresh, ttl_ms)?;
    for (name, token, fence) in granted {
        orphan.push((name.clone(), token.clone(), expires_at));
        tokens.insert(name.clone(), token);
        fences.insert(name, fence);
    }
    Ok((
        LockSetOutcome::Granted {
            locked: true,
            tokens,
            fences,
            expires_in_seconds: seconds_left(now + ttl_ms, now),
            fresh: fresh.into_iter().map(|(n, _)| n).collect(),
            expires_at,
        },
        Orphan::Holds(orphan),
    ))
}

/// `agent_id`'s live hold of `name`, if it has one.
pub(super) fn own_hold(tx: &mut Tx, name: &str, agent_id: &str) -> CoreResult<Option<LockRow>> {
    Ok(live_holders(tx, name)?
        .into_iter()
        .find(|h| h.agent_id == agent_id))
}

/// Grants `name` to the head ticket of its line: a refresh if the agent already holds it
/// (never undone if undelivered), else a new hold in `mode`.
pub(super) fn grant_single(
    tx: &mut Tx,
    name: &str,
    mode: LockMode,
    agent_id: &str,
    ttl_ms: Millis,
) -> CoreResult<(LockOutcome, Option<Orphan>)> {
    let now = tx.now();
    let (out, expires_at, fresh) = match own_hold(tx, name, agent_id)? {
        Some(l) => {
            let l = refresh(tx, l, ttl_ms)?;
            ((l.name, l.token, l.fence), l.expires_at, false)
        }
        None => {
            let (expires_at, granted) = grant(tx, agent_id, &[(name.to_string(), mode)], ttl_ms)?;
            let one = granted.into_iter().next().expect("one name granted");
            (one, expires_at, true)
        }
    };
    let (n, token, fence) = out;
    let out = LockOutcome::Granted {
        locked: true,
        lock_token: token.clone(),
        expires_in_seconds: seconds_left(now + ttl_ms, now),
        fence,
        fresh,
        expires_at,
    };
    // A refresh of a lock the agent already held is never undone.
    Ok((
        out,
        fresh.then(|| Orphan::Holds(vec![(n, token, expires_at)])),
    ))
}

/// The holder `proof` names among `holders` (all live, at least one): by token, or (v1) by
/// agent id, which names at most one holder since an agent holds a name once.
pub(super) fn find_holder(holders: Vec<LockRow>, proof: &HolderProof) -> Result<LockRow, String> {
    let found = holders.into_iter().find(|h| match proof {
        HolderProof::Token(t) => tokens_equal(t, &h.token),
        HolderProof::Agent(a) => *a == h.agent_id,
    });
    found.ok_or_else(|| match proof {
        HolderProof::Token(_) => "lock_token does not match the current holder's token \
                                  (the lock may have expired and been granted again)"
            .into(),
        HolderProof::Agent(_) => "the lock is held by another agent".into(),
    })
}

pub(super) fn renew(
    tx: &mut Tx,
    name: &str,
    proof: &HolderProof,
    ttl_ms: Millis,
) -> CoreResult<Renewed> {
    let holders = live_holders(tx, name)?;
    if holders.is_empty() {
        return Ok(Renewed::No {
            renewed: false,
            error: "the lock is not held (it may have expired)".into(),
        });
    }
    let row = match find_holder(holders, proof) {
        Ok(row) => row,
        Err(error) => {
            return Ok(Renewed::No {
                renewed: false,
                error,
            })
        }
    };
    let now = tx.now();
    let row = refresh(tx, row, ttl_ms)?;
    Ok(Renewed::Yes {
        renewed: true,
        expires_in_seconds: seconds_left(row.expires_at, now),
        fence: row.fence,
    })
}
