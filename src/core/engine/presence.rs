//! Presence: agents announce themselves with a TTL. An agent that unregisters, or whose
//! presence lapses, is gone: its locks are released (their lines move in the same
//! transaction), its leased tasks go back to pending (feeding parked claimers), and the places
//! it kept in lines between two windows are given up. That is the one place where a capability
//! moves the state of others, so it takes [`Locks`] and [`Tasks`] besides the [`Tx`].

use std::collections::HashMap;

use super::locks::Locks;
use super::tasks::Tasks;
use super::{Deadline, Reply, Tx};
use crate::clock::{seconds_left, Millis};
use crate::core::types::*;
use crate::store::AgentRow;

pub(super) fn register_agent(
    tx: &mut Tx,
    agent_id: String,
    ttl_ms: Millis,
    reply: Reply<Registered>,
) {
    let r = register(tx, agent_id, ttl_ms);
    tx.respond(reply, r)
}

fn register(tx: &mut Tx, agent_id: String, ttl_ms: Millis) -> CoreResult<Registered> {
    let now = tx.now();
    let expires_at = now + ttl_ms;
    tx.db(|s| {
        s.agent_put(&AgentRow {
            agent_id: agent_id.clone(),
            expires_at,
        })
    })?;
    tx.schedule(expires_at, Deadline::AgentLapse(agent_id));
    Ok(Registered {
        registered: true,
        expires_in_seconds: seconds_left(expires_at, now),
    })
}

pub(super) fn unregister_agent(
    tx: &mut Tx,
    locks: &mut Locks,
    tasks: &mut Tasks,
    agent_id: &str,
    reply: Reply<Unregistered>,
) {
    let r = release_agent(tx, locks, tasks, agent_id).map(|_| Unregistered { unregistered: true });
    tx.respond(reply, r)
}

/// The agent is gone: forget it, release its locks, return its leased tasks to pending.
fn release_agent(
    tx: &mut Tx,
    locks: &mut Locks,
    tasks: &mut Tasks,
    agent_id: &str,
) -> CoreResult<()> {
    tx.db(|s| s.agent_delete(agent_id))?;
    locks.release_agent(tx, agent_id)?;
    tasks.requeue_leased_by(tx, agent_id)?;
    locks.drop_kept_places(agent_id);
    Ok(())
}

/// The agent's presence deadline: releases it if it lapsed, else re-arms at its expiry.
pub(super) fn lapse(
    tx: &mut Tx,
    locks: &mut Locks,
    tasks: &mut Tasks,
    agent: String,
    now: Millis,
) -> CoreResult<()> {
    if let Some(a) = tx.db(|s| s.agent_get(&agent))? {
        if a.expires_at <= now {
            tracing::info!(agent = %agent, "presence lapsed");
            release_agent(tx, locks, tasks, &agent)?;
        } else {
            tx.schedule(a.expires_at, Deadline::AgentLapse(agent));
        }
    }
    Ok(())
}

pub(super) fn list_agents(tx: &mut Tx, reply: Reply<Vec<AgentView>>) {
    let r = agent_views(tx);
    tx.respond(reply, r)
}

/// Every live agent with the locks and leases it holds now (counted by the store: the rows
/// themselves, task payloads included, are never loaded for this).
pub(super) fn agent_views(tx: &mut Tx) -> CoreResult<Vec<AgentView>> {
    let now = tx.now();
    let agents = tx.db(|s| s.agent_list())?;
    let locks_by: HashMap<String, i64> = tx.db(|s| s.lock_counts(now))?.into_iter().collect();
    let leases_by: HashMap<String, i64> = tx.db(|s| s.lease_counts(now))?.into_iter().collect();
    let count = |by: &HashMap<String, i64>, agent: &str| {
        by.get(agent)
            .map_or(0, |&n| usize::try_from(n).unwrap_or(0))
    };
    Ok(agents
        .into_iter()
        .filter(|a| a.expires_at > now)
        .map(|a| AgentView {
            locks_held: count(&locks_by, &a.agent_id),
            leases_held: count(&leases_by, &a.agent_id),
            expires_in_seconds: seconds_left(a.expires_at, now),
            agent_id: a.agent_id,
        })
        .collect())
}
