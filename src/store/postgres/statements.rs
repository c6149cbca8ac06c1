//! Every query of the PostgreSQL store as one prepared statement, declared here in one list and
//! prepared together when the store opens (`PgStore::new`); the column lists the row decoders and
//! page queries share.

use tokio_postgres::{Client, Statement};

/// Declares the prepared statements: one field per query, all prepared at once (pipelined on the
/// connection, so startup costs about one round trip, not one per statement).
macro_rules! statements {
    ($($name:ident = $sql:expr;)*) => {
        pub(super) struct Statements {
            $(pub(super) $name: Statement,)*
        }

        impl Statements {
            pub(super) async fn prepare(client: &Client) -> Result<Statements, tokio_postgres::Error> {
                $(let $name: String = ($sql).to_string();)*
                let ($($name,)*) = futures::try_join!($(client.prepare(&$name),)*)?;
                Ok(Statements { $($name,)* })
            }
        }
    };
}

const NOTE_COLUMNS: &str = "key, value, author, expires_at";
pub(super) const LOCK_COLUMNS: &str =
    "name, agent_id, token, fence, expires_at, shared, max_holders";
pub(super) const TASK_COLUMNS: &str =
    "id, queue, payload, author, priority, state, attempts, lease_agent, \
                            lease_token, lease_expires_at, finished_at, ready_at, max_attempts, \
                            unique_key, last_error, result";

statements! {
    history_insert = super::history::INSERT;
    // Pruning, by count and by age, each bounded by what it deletes (as on SQLite): the count
    // cut seeks the primary key; the age cut walks the oldest entries in id order to the first
    // young enough (ids grow with time). No scan of the whole table.
    history_prune_count = "DELETE FROM airlock.history
                           WHERE id <= (SELECT max(id) FROM airlock.history) - $1";
    history_prune_age = "DELETE FROM airlock.history WHERE id < coalesce(
                           (SELECT id FROM airlock.history WHERE at >= $1 ORDER BY id LIMIT 1),
                           (SELECT max(id) + 1 FROM airlock.history))";
    note_get = &format!("SELECT {NOTE_COLUMNS} FROM airlock.notes WHERE key = $1");
    note_put = "INSERT INTO airlock.notes (key, value, author, expires_at) VALUES ($1, $2, $3, $4)
                ON CONFLICT (key) DO UPDATE SET value = excluded.value, author = excluded.author,
                expires_at = excluded.expires_at";
    note_delete = "DELETE FROM airlock.notes WHERE key = $1";
    note_list = &format!(
        "SELECT {NOTE_COLUMNS} FROM airlock.notes
         WHERE expires_at IS NULL OR expires_at > $1 ORDER BY key"
    );
    notes_purge_expired =
        "DELETE FROM airlock.notes WHERE expires_at IS NOT NULL AND expires_at <= $1";
    // The sum is checked in numeric, which cannot overflow: a sum outside bigint's range leaves
    // the row as it was and returns no row, which is the "overflow" answer. (Adding in bigint
    // would raise an error and abort the whole transaction.) An absent counter starts at `by`.
    counter_add = "INSERT INTO airlock.counters AS c (name, value) VALUES ($1, $2)
                   ON CONFLICT (name) DO UPDATE SET value = c.value + excluded.value
                   WHERE c.value::numeric + excluded.value::numeric
                         BETWEEN -9223372036854775808 AND 9223372036854775807
                   RETURNING value";
    lock_holders = &format!(
        "SELECT {LOCK_COLUMNS} FROM airlock.locks WHERE name = $1 ORDER BY fence"
    );
    lock_put = &format!(
        "INSERT INTO airlock.locks ({LOCK_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (name, agent_id) DO UPDATE SET token = excluded.token,
         fence = excluded.fence, expires_at = excluded.expires_at, shared = excluded.shared,
         max_holders = excluded.max_holders"
    );
    lock_delete_holder = "DELETE FROM airlock.locks WHERE name = $1 AND agent_id = $2";
    lock_delete = "DELETE FROM airlock.locks WHERE name = $1";
    lock_list = &format!("SELECT {LOCK_COLUMNS} FROM airlock.locks ORDER BY name, fence");
    locks_held_by = &format!(
        "SELECT {LOCK_COLUMNS} FROM airlock.locks WHERE agent_id = $1 ORDER BY name"
    );
    fence_next = "INSERT INTO airlock.lock_fences AS f (name, last_fence) VALUES ($1, 1)
                  ON CONFLICT (name) DO UPDATE SET last_fence = f.last_fence + 1
                  RETURNING last_fence";
    // A fence the store remembered (see `cache`): written only over the one before it, and
    // refused by the server otherwise (the cast fails only when no row changed), so the
    // transaction aborts and the COMMIT sent behind it in the same round trip fails too.
    fence_advance = "WITH u AS (UPDATE airlock.lock_fences SET last_fence = $2::bigint
                     WHERE name = $1 AND last_fence = $2::bigint - 1 RETURNING 1)
                     SELECT CASE WHEN (SELECT count(*) FROM u) = 1 THEN 1
                     ELSE ('airlock: the stored fence of this lock moved under the coordinator \
                     (another writer?); rows changed: ' || (SELECT count(*) FROM u))::int END";
    agent_get = "SELECT agent_id, expires_at FROM airlock.agents WHERE agent_id = $1";
    agent_put = "INSERT INTO airlock.agents (agent_id, expires_at) VALUES ($1, $2)
                 ON CONFLICT (agent_id) DO UPDATE SET expires_at = excluded.expires_at";
    agent_delete = "DELETE FROM airlock.agents WHERE agent_id = $1";
    agent_list = "SELECT agent_id, expires_at FROM airlock.agents ORDER BY agent_id";
    event_get = "SELECT name, generation, cleared_at FROM airlock.events WHERE name = $1";
    event_put = "INSERT INTO airlock.events (name, generation, cleared_at) VALUES ($1, $2, $3)
                 ON CONFLICT (name) DO UPDATE SET generation = excluded.generation,
                 cleared_at = excluded.cleared_at";
    event_list = "SELECT name, generation, cleared_at FROM airlock.events ORDER BY name";
    task_insert = "INSERT INTO airlock.tasks
                   (queue, payload, author, priority, state, attempts, created_at, ready_at,
                   max_attempts, unique_key)
                   VALUES ($1, $2, $3, $4, 'pending', 0, $5, $6, $7, $8) RETURNING id";
    task_get = &format!("SELECT {TASK_COLUMNS} FROM airlock.tasks WHERE id = $1");
    task_update = "UPDATE airlock.tasks SET state = $2, attempts = $3, lease_agent = $4,
                   lease_token = $5, lease_expires_at = $6, finished_at = $7, ready_at = $8,
                   last_error = $9, result = $10 WHERE id = $1";
    // SKIP LOCKED: one writer at a time is the design, but should two ever overlap, they still
    // never pick the same task.
    task_next_pending = &format!(
        "SELECT {TASK_COLUMNS} FROM airlock.tasks WHERE queue = $1 AND state = 'pending'
         AND (ready_at IS NULL OR ready_at <= $2)
         ORDER BY priority DESC, id LIMIT 1 FOR UPDATE SKIP LOCKED"
    );
    task_claim_next = &format!(
        "UPDATE airlock.tasks SET state = 'claimed', attempts = attempts + 1, lease_agent = $3,
         lease_token = $4, lease_expires_at = $5
         WHERE id = (SELECT id FROM airlock.tasks WHERE queue = $1 AND state = 'pending'
         AND (ready_at IS NULL OR ready_at <= $2)
         ORDER BY priority DESC, id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING {TASK_COLUMNS}"
    );
    task_complete = "UPDATE airlock.tasks SET state = 'completed', result = $4, lease_token = NULL,
                     lease_expires_at = NULL, finished_at = $3 WHERE id = $1 AND state = 'claimed'
                     AND lease_token = $2 AND lease_expires_at > $3 RETURNING queue, lease_agent";
    task_fail = "UPDATE airlock.tasks SET state = 'failed', last_error = $4, lease_token = NULL,
                 lease_expires_at = NULL, finished_at = $3 WHERE id = $1 AND state = 'claimed'
                 AND lease_token = $2 AND lease_expires_at > $3 RETURNING queue, lease_agent";
    task_live_with_key = &format!(
        "SELECT {TASK_COLUMNS} FROM airlock.tasks WHERE queue = $1 AND unique_key = $2
         AND state IN ('pending', 'claimed')"
    );
    task_list_in = &format!(
        "SELECT {TASK_COLUMNS} FROM airlock.tasks WHERE ($1::text IS NULL OR queue = $1)
         AND ($2::text IS NULL OR state = $2) ORDER BY id"
    );
    task_counts = "SELECT queue, state, count(*) FROM airlock.tasks GROUP BY queue, state
                   ORDER BY queue";
    tasks_leased_by = &format!(
        "SELECT {TASK_COLUMNS} FROM airlock.tasks WHERE lease_agent = $1 AND state = 'claimed'
         ORDER BY id"
    );
    tasks_purge_finished =
        "DELETE FROM airlock.tasks WHERE finished_at IS NOT NULL AND finished_at <= $1";
    expiries_locks = "SELECT name, expires_at FROM airlock.locks";
    expiries_agents = "SELECT agent_id, expires_at FROM airlock.agents";
    expiries_leases = "SELECT id, lease_expires_at FROM airlock.tasks WHERE state = 'claimed'";
    expiries_delayed = "SELECT id, ready_at FROM airlock.tasks
                        WHERE state = 'pending' AND ready_at IS NOT NULL";
    record_forwarded_grant = "UPDATE airlock.calls SET orphan = $2 WHERE id = $1";
}
