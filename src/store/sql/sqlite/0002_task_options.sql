-- SQLite migration 2: push_task's delay, attempt limit and unique key; fail_task's error and
-- complete_task's result. A new state, 'dead', needs no change: `state` is free text.
ALTER TABLE tasks ADD COLUMN ready_at INTEGER;
ALTER TABLE tasks ADD COLUMN max_attempts INTEGER;
ALTER TABLE tasks ADD COLUMN unique_key TEXT;
ALTER TABLE tasks ADD COLUMN last_error TEXT;
ALTER TABLE tasks ADD COLUMN result TEXT;
-- The engine checks for a live task with the key before it inserts; this makes a second one
-- impossible even so.
CREATE UNIQUE INDEX tasks_unique_live ON tasks(queue, unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('pending', 'claimed');
CREATE INDEX tasks_delayed ON tasks(ready_at) WHERE ready_at IS NOT NULL AND state = 'pending';
