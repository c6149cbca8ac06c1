//! Presence: agents announce themselves with a TTL. An agent that unregisters, or whose
//! presence lapses, is gone: its locks are released (their lines move in the same
//! transaction), its leased tasks go back to pending (feeding parked claimers), and the places
//! it kept in lines between two windows are given up. That is the one place where a capability
//! moves the state of others, so it takes [`Locks`] and [`Tasks`] besides the [`Tx`].

use super::locks::Locks;
use super::tasks::Tasks;
use super::{Deadline, Reply, Tx};
use crate::clock::{seconds_left, Millis};
use crate::core::history::Why;
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
    let r = release_agent(tx, locks, tasks, agent_id, Why::Shutdown)
        .map(|_| Unregistered { unregistered: true });
    tx.respond(reply, r)
}

/// The agent is gone (`why`: it unregistered, or its presence lapsed): forget it, release its
/// locks, return its leased tasks to pending.
fn release_agent(
    tx: &mut Tx,
    locks: &mut Locks,
    tasks: &mut Tasks,
    agent_id: &str,
    why: Why,
) -> CoreResult<()> {
    tx.db(|s| s.agent_delete(agent_id))?;
    locks.release_agent(tx, agent_id, why)?;
    tasks.requeue_leased_by(tx, agent_id, why)?;
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
            release_agent(tx, locks, tasks, &agent, Why::PresenceLapse)?;
        } else {
            tx.schedule(a.expires_at, Deadline::AgentLapse(agent));
        }
    }
    Ok(())
}

/// One page of live agents, in id order, with what each holds (counted by the store for the
/// agents of the page only).
pub(super) fn list_agents(tx: &mut Tx, page: &Page, reply: Reply<Paged<AgentView>>) {
    let r = agent_page(tx, page);
    tx.respond(reply, r)
}

pub(super) fn agent_page(tx: &mut Tx, page: &Page) -> CoreResult<Paged<AgentView>> {
    {
        let now = tx.now();
        let (agents, more) = tx.db(|s| s.agent_page(now, page.after.as_deref(), page.limit))?;
        let next_cursor = more
            .then(|| agents.last().map(|a| a.agent_id.clone()))
            .flatten();
        let ids: Vec<String> = agents.iter().map(|a| a.agent_id.clone()).collect();
        let held = tx.db(|s| s.holdings(now, &ids))?;
        let items = agents
            .into_iter()
            .map(|a| {
                let (locks_held, leases_held) = held.get(&a.agent_id).copied().unwrap_or((0, 0));
                AgentView {
                    locks_held,
                    leases_held,
                    expires_in_seconds: seconds_left(a.expires_at, now),
                    agent_id: a.agent_id,
                }
            })
            .collect();
        Ok(Paged { items, next_cursor })
    }
}
