-- PostgreSQL migration 5: a lock has one row per holder. A shared lock or a semaphore (`limit`)
-- has several holders at once, each with its own token and fence; an exclusive lock has one. A
-- holder is (name, agent_id): one agent holds a name once. Every existing lock becomes an
-- exclusive holder.
--
-- Made only where missing, like migrations 2 and 3: re-running it on a database that has the
-- columns changes nothing and needs no ALTER right.
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM information_schema.columns
        WHERE table_schema = 'airlock' AND table_name = 'locks' AND column_name = 'shared'
    ) THEN
        ALTER TABLE airlock.locks
            -- true: a shared holder (or a semaphore's); false: exclusive.
            ADD COLUMN shared BOOLEAN NOT NULL DEFAULT false,
            -- A semaphore's limit (the same on every holder of the name); NULL: none.
            ADD COLUMN max_holders BIGINT,
            DROP CONSTRAINT locks_pkey,
            ADD PRIMARY KEY (name, agent_id);
    END IF;
END
$$;
