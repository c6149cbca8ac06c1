-- SQLite migration 1: the first schema. `PRAGMA user_version` counts the migrations applied
-- (src/store/sqlite.rs). Append only: a released migration is never edited; a change is a new
-- file with the next number.
CREATE TABLE notes (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    author TEXT,
    expires_at INTEGER
);
CREATE INDEX notes_expires ON notes(expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE locks (
    name TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL,
    token TEXT NOT NULL,
    fence INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX locks_agent ON locks(agent_id);
-- Never deleted: a fence must never be reused, even after the lock row is gone.
CREATE TABLE lock_fences (name TEXT PRIMARY KEY, last_fence INTEGER NOT NULL);
CREATE TABLE agents (agent_id TEXT PRIMARY KEY, expires_at INTEGER NOT NULL);
CREATE TABLE events (
    name TEXT PRIMARY KEY,
    generation INTEGER NOT NULL,
    cleared_at INTEGER NOT NULL
);
CREATE TABLE tasks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    payload TEXT NOT NULL,
    author TEXT,
    priority INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    lease_agent TEXT,
    lease_token TEXT,
    lease_expires_at INTEGER,
    created_at INTEGER NOT NULL,
    finished_at INTEGER
);
CREATE INDEX tasks_pending ON tasks(queue, priority DESC, id) WHERE state = 'pending';
CREATE INDEX tasks_lease_agent ON tasks(lease_agent) WHERE lease_agent IS NOT NULL;
CREATE INDEX tasks_finished ON tasks(finished_at) WHERE finished_at IS NOT NULL;
