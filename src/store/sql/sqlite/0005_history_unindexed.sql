-- SQLite migration 5: the history's indexes go. Each put a batch's entries (one per grant,
-- release, task change) on as many index pages as the batch had names and agents, all written to
-- the WAL at every commit: a quarter of the lock path's throughput. Reads filter while they walk
-- the table newest first, a bounded number of entries per page (store/sqlite/history.rs).
DROP INDEX IF EXISTS history_name;
DROP INDEX IF EXISTS history_agent;
