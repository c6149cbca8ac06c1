-- SQLite migration 3: a lock has one row per holder. A shared lock or a semaphore (`limit`) has
-- several holders at once, each with its own token and fence; an exclusive lock has one. A
-- holder is (name, agent_id): one agent holds a name once. SQLite cannot change a primary key in
-- place, so the table is rebuilt; every existing lock becomes an exclusive holder.
CREATE TABLE locks_by_holder (
    name TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    token TEXT NOT NULL,
    fence INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    -- 1: a shared holder (or a semaphore's); 0: exclusive.
    shared INTEGER NOT NULL DEFAULT 0,
    -- A semaphore's limit (the same on every holder of the name); NULL: none.
    max_holders INTEGER,
    PRIMARY KEY (name, agent_id)
);
INSERT INTO locks_by_holder (name, agent_id, token, fence, expires_at)
    SELECT name, agent_id, token, fence, expires_at FROM locks;
DROP TABLE locks;
ALTER TABLE locks_by_holder RENAME TO locks;
CREATE INDEX locks_agent ON locks(agent_id);
