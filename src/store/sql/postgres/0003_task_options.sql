-- PostgreSQL migration 3: push_task's delay, attempt limit and unique key; fail_task's error
-- and complete_task's result. A new state, 'dead', needs no change: `state` is free text.
--
-- Made only where missing, like migration 2: re-running it on a database that has the columns
-- changes nothing and needs no ALTER right (tests/store.rs rewinds a database's version rows to
-- replay the upgrade of an old one as a read/write-only role).
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM information_schema.columns
        WHERE table_schema = 'airlock' AND table_name = 'tasks' AND column_name = 'ready_at'
    ) THEN
        ALTER TABLE airlock.tasks
            ADD COLUMN ready_at BIGINT,
            ADD COLUMN max_attempts BIGINT,
            ADD COLUMN unique_key TEXT COLLATE "C",
            ADD COLUMN last_error TEXT,
            ADD COLUMN result TEXT;
        -- The engine checks for a live task with the key before it inserts; this makes a second
        -- one impossible even so.
        CREATE UNIQUE INDEX tasks_unique_live ON airlock.tasks (queue, unique_key)
            WHERE unique_key IS NOT NULL AND state IN ('pending', 'claimed');
        CREATE INDEX tasks_delayed ON airlock.tasks (ready_at)
            WHERE ready_at IS NOT NULL AND state = 'pending';
    END IF;
END
$$;
