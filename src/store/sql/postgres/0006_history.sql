-- PostgreSQL migration 6: the audit history. One row per thing that happened to a lock, a task
-- or an event (a grant, a release and why, a renewal, a task's change of state, a signal),
-- written in the transaction that made it happen. Kept by age and by count (core::history's
-- retention). Not counted in airlock.usage: its size is bounded by the retention, and a full
-- quota must never stop a release from being recorded.
--
-- Made only where missing, like migrations 2, 3 and 5: re-running it on a database that has the
-- table changes nothing and needs no CREATE right.
DO $$
BEGIN
    IF to_regclass('airlock.history') IS NULL THEN
        CREATE TABLE airlock.history (
            id BIGSERIAL PRIMARY KEY,
            at BIGINT NOT NULL,
            kind TEXT NOT NULL,
            -- The lock's name, the task's queue, or the event's name.
            name TEXT NOT NULL,
            agent_id TEXT,
            -- The lock's fence, the task's id, or the event's generation.
            number BIGINT,
            -- Why a hold or a lease ended (unlock, ttl, presence_lapse, shutdown, orphan,
            -- failed).
            reason TEXT,
            -- What a failed attempt said (fail_task's error, cut short).
            error TEXT
        );
        -- The filters of get_history, each read newest first.
        CREATE INDEX history_name ON airlock.history(name, id);
        CREATE INDEX history_agent ON airlock.history(agent_id, id);
    END IF;
END
$$;
