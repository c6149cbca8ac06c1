-- PostgreSQL migration 1: the first schema, in the schema `airlock` (src/store/postgres.rs
-- creates it and `airlock.schema_version`, one row per migration applied). Append only: a
-- released migration is never edited; a change is a new file with the next number.
--
-- Databases made before the migrations were files have version 1 with `airlock.calls` already
-- in it (it was part of this migration then); 0002 brings them to version 2 unchanged.
CREATE TABLE airlock.notes (
    key TEXT COLLATE "C" PRIMARY KEY,
    value TEXT NOT NULL,
    author TEXT,
    expires_at BIGINT
);
CREATE INDEX notes_expires ON airlock.notes (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE airlock.counters (name TEXT COLLATE "C" PRIMARY KEY, value BIGINT NOT NULL);
CREATE TABLE airlock.locks (
    name TEXT COLLATE "C" PRIMARY KEY,
    agent_id TEXT COLLATE "C" NOT NULL,
    token TEXT NOT NULL,
    fence BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX locks_agent ON airlock.locks (agent_id);
-- Never deleted: a fence must never be reused, even after the lock row is gone.
CREATE TABLE airlock.lock_fences (
    name TEXT COLLATE "C" PRIMARY KEY,
    last_fence BIGINT NOT NULL
);
CREATE TABLE airlock.agents (
    agent_id TEXT COLLATE "C" PRIMARY KEY,
    expires_at BIGINT NOT NULL
);
CREATE TABLE airlock.events (
    name TEXT COLLATE "C" PRIMARY KEY,
    generation BIGINT NOT NULL,
    cleared_at BIGINT NOT NULL
);
CREATE TABLE airlock.tasks (
    id BIGSERIAL PRIMARY KEY,
    queue TEXT COLLATE "C" NOT NULL,
    payload TEXT NOT NULL,
    author TEXT,
    priority BIGINT NOT NULL,
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    lease_agent TEXT COLLATE "C",
    lease_token TEXT,
    lease_expires_at BIGINT,
    created_at BIGINT NOT NULL,
    finished_at BIGINT
);
CREATE INDEX tasks_pending ON airlock.tasks (queue, priority DESC, id) WHERE state = 'pending';
CREATE INDEX tasks_lease_agent ON airlock.tasks (lease_agent) WHERE lease_agent IS NOT NULL;
CREATE INDEX tasks_finished ON airlock.tasks (finished_at) WHERE finished_at IS NOT NULL;
