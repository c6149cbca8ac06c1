//! Lock rows: reading a lock as its holders see it, granting, refreshing, checking a holder's
//! proof. These touch only the store (through a [`Tx`]); the lines of waiters and who is next
//! are [`super::locks`]'s.

use super::{new_token, tokens_equal, Deadline, Orphan, Tx};
use crate::clock::{seconds_left, Millis};
use crate::core::types::*;
use crate::store::LockRow;

/// The lock row if it is held now; an expired row counts as absent.
pub(super) fn live_lock(tx: &mut Tx, name: &str) -> CoreResult<Option<LockRow>> {
    let now = tx.now();
    Ok(tx.db(|s| s.lock_get(name))?.filter(|l| l.expires_at > now))
}

/// Extends a lock its agent already holds: same token, same fence.
pub(super) fn refresh(tx: &mut Tx, mut row: LockRow, ttl_ms: Millis) -> CoreResult<LockRow> {
    row.expires_at = tx.now() + ttl_ms;
    tx.db(|s| s.lock_put(&row))?;
    tx.schedule(row.expires_at, Deadline::LockExpiry(row.name.clone()));
    Ok(row)
}

/// Writes new grants of `names` to `agent_id`, one token and fence per name.
pub(super) fn grant(
    tx: &mut Tx,
    agent_id: &str,
    names: &[String],
    ttl_ms: Millis,
) -> CoreResult<Vec<(String, String, i64)>> {
    let expires_at = tx.now() + ttl_ms;
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let fence = tx.db(|s| s.fence_next(name))?;
        let row = LockRow {
            name: name.clone(),
            agent_id: agent_id.to_string(),
            token: new_token("lk"),
            fence,
            expires_at,
        };
        tx.db(|s| s.lock_put(&row))?;
        tx.schedule(expires_at, Deadline::LockExpiry(name.clone()));
        // Never the token: logs are read by people who must not be able to release the lock.
        tracing::info!(lock = %name, agent = %agent_id, fence, ttl_ms, "granted");
        out.push((row.name, row.token, fence));
    }
    Ok(out)
}

/// Grants a whole set (names already the agent's are refreshed, keeping their tokens).
pub(super) fn grant_set(
    tx: &mut Tx,
    agent_id: &str,
    names: &[String],
    ttl_ms: Millis,
) -> CoreResult<(LockSetOutcome, Orphan)> {
    let now = tx.now();
    let mut tokens = std::collections::BTreeMap::new();
    let mut fences = std::collections::BTreeMap::new();
    let mut fresh = Vec::new();
    for n in names {
        match live_lock(tx, n)? {
            Some(l) if l.agent_id == agent_id => {
                let l = refresh(tx, l, ttl_ms)?;
                tokens.insert(l.name.clone(), l.token);
                fences.insert(l.name, l.fence);
            }
            _ => fresh.push(n.clone()),
        }
    }
    let mut orphan = Vec::new();
    for (name, token, fence) in grant(tx, agent_id, &fresh, ttl_ms)? {
        orphan.push((name.clone(), token.clone()));
        tokens.insert(name.clone(), token);
        fences.insert(name, fence);
    }
    Ok((
        LockSetOutcome::Granted {
            locked: true,
            tokens,
            fences,
            expires_in_seconds: seconds_left(now + ttl_ms, now),
            fresh,
        },
        Orphan::Locks(orphan),
    ))
}

/// Grants `name` to the head ticket of its line: a refresh if the agent already holds it
/// (never undone if undelivered), else a new grant.
pub(super) fn grant_single(
    tx: &mut Tx,
    name: &str,
    names: &[String],
    agent_id: &str,
    ttl_ms: Millis,
) -> CoreResult<(LockOutcome, Option<Orphan>)> {
    let now = tx.now();
    let (out, fresh) = match live_lock(tx, name)? {
        Some(l) => {
            let l = refresh(tx, l, ttl_ms)?;
            ((l.name, l.token, l.fence), false)
        }
        None => (
            grant(tx, agent_id, names, ttl_ms)?
                .into_iter()
                .next()
                .expect("one name granted"),
            true,
        ),
    };
    let (n, token, fence) = out;
    let out = LockOutcome::Granted {
        locked: true,
        lock_token: token.clone(),
        expires_in_seconds: seconds_left(now + ttl_ms, now),
        fence,
        fresh,
    };
    // A refresh of a lock the agent already held is never undone.
    Ok((out, fresh.then(|| Orphan::Locks(vec![(n, token)]))))
}

pub(super) fn proof_matches(row: &LockRow, proof: &HolderProof) -> Result<(), String> {
    match proof {
        HolderProof::Token(t) if tokens_equal(t, &row.token) => Ok(()),
        HolderProof::Token(_) => Err("lock_token does not match the current holder's token \
                                      (the lock may have expired and been granted again)"
            .into()),
        HolderProof::Agent(a) if *a == row.agent_id => Ok(()),
        HolderProof::Agent(_) => Err("the lock is held by another agent".into()),
    }
}

pub(super) fn renew(
    tx: &mut Tx,
    name: &str,
    proof: &HolderProof,
    ttl_ms: Millis,
) -> CoreResult<Renewed> {
    let Some(row) = live_lock(tx, name)? else {
        return Ok(Renewed::No {
            renewed: false,
            error: "the lock is not held (it may have expired)".into(),
        });
    };
    if let Err(error) = proof_matches(&row, proof) {
        return Ok(Renewed::No {
            renewed: false,
            error,
        });
    }
    let now = tx.now();
    let row = refresh(tx, row, ttl_ms)?;
    Ok(Renewed::Yes {
        renewed: true,
        expires_in_seconds: seconds_left(row.expires_at, now),
        fence: row.fence,
    })
}
