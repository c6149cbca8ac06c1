-- PostgreSQL migration 2: the coordinator's inbox, tool calls forwarded by the other daemons
-- (src/store/calls.rs has its statements and the life of a row).
--
-- Until the migrations were files this table was made by migration 1, so a database made then
-- has it at version 1. Made only where it is missing: that upgrade then changes nothing, and
-- needs no CREATE right (`CREATE TABLE IF NOT EXISTS` would check for one even when the table
-- exists, and a daemon with read/write rights only must still start on such a database).
DO $$
BEGIN
    IF to_regclass('airlock.calls') IS NULL THEN
        CREATE TABLE airlock.calls (
            id BIGSERIAL PRIMARY KEY,
            daemon TEXT NOT NULL,          -- id of the daemon that received the call
            tool TEXT NOT NULL,
            args TEXT NOT NULL,            -- JSON object
            state TEXT NOT NULL DEFAULT 'queued',  -- queued | running | done | cancelled | orphaned
            result TEXT,                   -- JSON
            orphan TEXT,                   -- JSON: what to release if nobody reads the result
            created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
        );
        CREATE INDEX calls_queued ON airlock.calls (id) WHERE state = 'queued';
        CREATE INDEX calls_daemon ON airlock.calls (daemon);
    END IF;
END
$$;
