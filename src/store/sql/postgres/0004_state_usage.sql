-- PostgreSQL migration 4: the bytes the state takes, for the storage quota
-- (AIRLOCK_MAX_STATE_BYTES). One row in `airlock.usage`, kept by statement triggers on the
-- tables that hold callers' values (notes, tasks) from the rows each statement wrote or
-- removed: the sizes of the row's text (as `octet_length` reads them, without fetching a
-- TOASTed value) plus 64 bytes a row, as the quota counts a write before it is made. It is the
-- state's logical size, so deletes give room back at once (the files shrink only as autovacuum
-- and the server allow). The coordinator reads it with each COMMIT.
--
-- Made only where missing, like migrations 2 and 3 (tests/store.rs replays upgrades).
DO $$
BEGIN
    IF to_regclass('airlock.usage') IS NULL THEN
        CREATE TABLE airlock.usage (
            only_row BOOLEAN PRIMARY KEY DEFAULT true CHECK (only_row),
            bytes BIGINT NOT NULL
        );
        INSERT INTO airlock.usage (bytes) SELECT
            (SELECT COALESCE(sum(64 + octet_length(key) + octet_length(value)
                                 + COALESCE(octet_length(author), 0)), 0) FROM airlock.notes)
          + (SELECT COALESCE(sum(64 + octet_length(queue) + octet_length(payload)
                                 + COALESCE(octet_length(author), 0)
                                 + COALESCE(octet_length(result), 0)
                                 + COALESCE(octet_length(last_error), 0)), 0) FROM airlock.tasks);

        CREATE FUNCTION airlock.usage_of_notes() RETURNS trigger LANGUAGE plpgsql AS $f$
        DECLARE
            delta BIGINT := 0;
        BEGIN
            IF TG_OP IN ('INSERT', 'UPDATE') THEN
                SELECT delta + COALESCE(sum(64 + octet_length(key) + octet_length(value)
                                            + COALESCE(octet_length(author), 0)), 0)
                  INTO delta FROM new_rows;
            END IF;
            IF TG_OP IN ('UPDATE', 'DELETE') THEN
                SELECT delta - COALESCE(sum(64 + octet_length(key) + octet_length(value)
                                            + COALESCE(octet_length(author), 0)), 0)
                  INTO delta FROM old_rows;
            END IF;
            IF delta <> 0 THEN
                UPDATE airlock.usage SET bytes = bytes + delta;
            END IF;
            RETURN NULL;
        END
        $f$;
        CREATE FUNCTION airlock.usage_of_tasks() RETURNS trigger LANGUAGE plpgsql AS $f$
        DECLARE
            delta BIGINT := 0;
        BEGIN
            IF TG_OP IN ('INSERT', 'UPDATE') THEN
                SELECT delta + COALESCE(sum(64 + octet_length(queue) + octet_length(payload)
                                            + COALESCE(octet_length(author), 0)
                                            + COALESCE(octet_length(result), 0)
                                            + COALESCE(octet_length(last_error), 0)), 0)
                  INTO delta FROM new_rows;
            END IF;
            IF TG_OP IN ('UPDATE', 'DELETE') THEN
                SELECT delta - COALESCE(sum(64 + octet_length(queue) + octet_length(payload)
                                            + COALESCE(octet_length(author), 0)
                                            + COALESCE(octet_length(result), 0)
                                            + COALESCE(octet_length(last_error), 0)), 0)
                  INTO delta FROM old_rows;
            END IF;
            IF delta <> 0 THEN
                UPDATE airlock.usage SET bytes = bytes + delta;
            END IF;
            RETURN NULL;
        END
        $f$;
        -- A trigger with transition tables serves one event; INSERT … ON CONFLICT DO UPDATE
        -- fires both the insert and the update trigger, each with its own rows.
        CREATE TRIGGER usage_notes_insert AFTER INSERT ON airlock.notes
            REFERENCING NEW TABLE AS new_rows
            FOR EACH STATEMENT EXECUTE FUNCTION airlock.usage_of_notes();
        CREATE TRIGGER usage_notes_update AFTER UPDATE ON airlock.notes
            REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
            FOR EACH STATEMENT EXECUTE FUNCTION airlock.usage_of_notes();
        CREATE TRIGGER usage_notes_delete AFTER DELETE ON airlock.notes
            REFERENCING OLD TABLE AS old_rows
            FOR EACH STATEMENT EXECUTE FUNCTION airlock.usage_of_notes();
        CREATE TRIGGER usage_tasks_insert AFTER INSERT ON airlock.tasks
            REFERENCING NEW TABLE AS new_rows
            FOR EACH STATEMENT EXECUTE FUNCTION airlock.usage_of_tasks();
        CREATE TRIGGER usage_tasks_update AFTER UPDATE ON airlock.tasks
            REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
            FOR EACH STATEMENT EXECUTE FUNCTION airlock.usage_of_tasks();
        CREATE TRIGGER usage_tasks_delete AFTER DELETE ON airlock.tasks
            REFERENCING OLD TABLE AS old_rows
            FOR EACH STATEMENT EXECUTE FUNCTION airlock.usage_of_tasks();
    END IF;
END
$$;
