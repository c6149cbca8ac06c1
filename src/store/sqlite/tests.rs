//! Unit tests of the SQLite store.
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::space::{VACUUM_EVERY, VACUUM_THRESHOLD_PAGES};
use super::*;

fn pragma(s: &SqliteStore, p: &str) -> i64 {
    s.conn
        .query_row(&format!("PRAGMA {p}"), [], |r| r.get(0))
        .unwrap()
}

/// Deleted rows' space goes back to the file system, and the usage gauge follows.
#[test]
fn deletes_give_space_back_through_incremental_vacuum() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = SqliteStore::open(&dir.path().join("state.db")).unwrap();
    assert_eq!(pragma(&s, "auto_vacuum"), 2, "incremental");
    let value = "v".repeat(4096);
    s.begin().unwrap();
    for i in 0..2000 {
        s.note_put(&NoteRow {
            key: format!("k{i:04}"),
            value: value.clone(),
            author: None,
            expires_at: None,
        })
        .unwrap();
    }
    s.commit().unwrap();
    let full = s.usage.load(Ordering::Relaxed);
    assert!(full > 8_000_000, "{full}");
    let pages_full = pragma(&s, "page_count");
    s.begin().unwrap();
    for i in 0..2000 {
        s.note_delete(&format!("k{i:04}")).unwrap();
    }
    s.commit().unwrap();
    assert!(
        s.usage.load(Ordering::Relaxed) < full / 10,
        "freed pages are not in use"
    );
    // The next commit past VACUUM_EVERY gives the free pages back.
    s.last_vacuum = Instant::now() - VACUUM_EVERY - Duration::from_millis(1);
    s.begin().unwrap();
    s.commit().unwrap();
    assert!(pragma(&s, "freelist_count") < VACUUM_THRESHOLD_PAGES);
    assert!(pragma(&s, "page_count") < pages_full / 10);
}

/// A database made before incremental auto-vacuum is rebuilt once to take it, keeping its rows.
#[test]
fn an_older_database_is_converted_to_incremental_vacuum() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let mut s = SqliteStore::open(&path).unwrap();
        s.begin().unwrap();
        s.note_put(&NoteRow {
            key: "kept".into(),
            value: "v".into(),
            author: None,
            expires_at: None,
        })
        .unwrap();
        s.commit().unwrap();
        s.conn
            .execute_batch("PRAGMA auto_vacuum=NONE; VACUUM;")
            .unwrap();
        assert_eq!(pragma(&s, "auto_vacuum"), 0);
    }
    let mut s = SqliteStore::open(&path).unwrap();
    assert_eq!(pragma(&s, "auto_vacuum"), 2);
    assert_eq!(s.note_get("kept").unwrap().unwrap().value, "v");
}

/// Pages are bounded by their limit and by the bytes of their values, and say when more follow.
#[test]
fn pages_stop_at_the_limit_or_the_byte_budget() {
    let mut s = SqliteStore::open_in_memory().unwrap();
    s.begin().unwrap();
    for i in 0..10 {
        s.note_put(&NoteRow {
            key: format!("k{i}"),
            value: "x".repeat(100),
            author: None,
            expires_at: None,
        })
        .unwrap();
    }
    s.commit().unwrap();
    let (rows, more) = s.note_page(0, None, 4, Values::Whole, usize::MAX).unwrap();
    assert_eq!((rows.len(), more), (4, true));
    let (rows, more) = s.note_page(0, Some("k3"), 100, Values::Whole, 250).unwrap();
    assert_eq!(
        rows.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
        ["k4", "k5", "k6"]
    );
    assert!(more);
    let (rows, more) = s.note_page(0, Some("k7"), 100, Values::Omit, 1).unwrap();
    assert_eq!(
        rows.len(),
        2,
        "values left out do not count against the budget"
    );
    assert!(!more && rows.iter().all(|r| r.value.is_empty()));
}

/// The durability promise rests on these settings: WAL, and an fsync at every commit.
#[test]
fn a_file_database_is_wal_with_an_fsync_per_commit() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("state.db")).unwrap();
    let get = |p: &str| -> String {
        s.conn
            .query_row(&format!("PRAGMA {p}"), [], |r| {
                r.get::<_, rusqlite::types::Value>(0)
            })
            .map(|v| match v {
                rusqlite::types::Value::Integer(i) => i.to_string(),
                rusqlite::types::Value::Text(t) => t,
                other => format!("{other:?}"),
            })
            .unwrap()
    };
    assert_eq!(get("journal_mode"), "wal");
    assert_eq!(get("synchronous"), "2", "synchronous must be FULL");
    assert_eq!(get("fullfsync"), "1");
}

#[test]
fn fences_never_repeat_even_after_the_lock_row_is_gone() {
    let mut s = SqliteStore::open_in_memory().unwrap();
    s.begin().unwrap();
    assert_eq!(s.fence_next("a").unwrap(), 1);
    assert_eq!(s.fence_next("a").unwrap(), 2);
    assert_eq!(s.fence_next("b").unwrap(), 1);
    s.commit().unwrap();
}

#[test]
fn pending_tasks_come_by_priority_then_age() {
    let mut s = SqliteStore::open_in_memory().unwrap();
    s.begin().unwrap();
    let low = s.task_insert("q", "low", None, 0, 1).unwrap();
    let high = s.task_insert("q", "high", None, 5, 2).unwrap();
    let high2 = s.task_insert("q", "high2", None, 5, 3).unwrap();
    assert!(low < high && high < high2);
    assert_eq!(s.task_next_pending("q").unwrap().unwrap().id, high);
    s.commit().unwrap();
}

/// A cached statement is parsed and planned once: binding new values never re-prepares it (the
/// planner compared `id = ?1` with `tasks_pending`'s `state = 'pending'` and re-prepared every
/// task statement at every run before the query planner stability guarantee was turned on).
#[test]
fn task_statements_are_prepared_once() {
    let mut s = SqliteStore::open_in_memory().unwrap();
    s.begin().unwrap();
    let a = s.task_insert("q", "a", None, 0, 1).unwrap();
    let b = s.task_insert("r", "b", None, 0, 2).unwrap();
    for (id, queue, now) in [(a, "q", 10), (b, "r", 20), (a, "q", 30), (b, "s", 40)] {
        let mut t = s.task_get(id).unwrap().unwrap();
        t.attempts += 1;
        s.task_update(&t).unwrap();
        s.task_next_ready(queue, now).unwrap();
    }
    s.commit().unwrap();
    for sql in [TASK_GET, TASK_NEXT_READY] {
        let st = s.conn.prepare_cached(sql).unwrap();
        let reprepared = st.get_status(rusqlite::StatementStatus::RePrepare);
        assert_eq!(reprepared, 0, "{sql}");
        assert!(
            st.get_status(rusqlite::StatementStatus::VmStep) > 0,
            "the cached statement is the one that ran: {sql}"
        );
    }
}

#[test]
fn counter_overflow_is_reported_not_wrapped() {
    let mut s = SqliteStore::open_in_memory().unwrap();
    s.begin().unwrap();
    assert_eq!(s.counter_add("c", i64::MAX).unwrap(), Some(i64::MAX));
    assert_eq!(s.counter_add("c", 1).unwrap(), None);
    s.commit().unwrap();
}

/// Pipelined: commits no longer sync (`synchronous=OFF`), SQLite's own checkpoint is off, ours
/// runs once the WAL passes its mark (with FULL for the call, then OFF again), and what was
/// committed is there after the store is closed and reopened.
#[test]
fn pipelined_commits_checkpoint_on_their_own_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let value = "v".repeat(4096);
    {
        let mut s = SqliteStore::open(&path).unwrap();
        assert_eq!(pragma(&s, "synchronous"), 2, "FULL until pipelined");
        let mut syncer = s.pipeline().unwrap().expect("a file database pipelines");
        assert_eq!(pragma(&s, "synchronous"), 0, "OFF");
        for round in 0..6 {
            s.begin().unwrap();
            for i in 0..200 {
                s.note_put(&NoteRow {
                    key: format!("k{round}-{i:03}"),
                    value: value.clone(),
                    author: None,
                    expires_at: None,
                })
                .unwrap();
            }
            s.commit().unwrap();
            syncer.sync().unwrap();
        }
        // 1,200 pages written: our checkpoint ran (SQLite's would have at 1,000 too, but it is
        // off), and left the store at OFF.
        assert!(s.wal.as_ref().unwrap().frames() < 1000);
        assert_eq!(pragma(&s, "synchronous"), 0);
        assert!(s.pipeline().is_err(), "pipelined once only");
    }
    let mut s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.note_list(0).unwrap().len(), 1200);
    // An in-memory store has no WAL to sync: it stays as it is.
    let mut m = SqliteStore::open_in_memory().unwrap();
    assert!(m.pipeline().unwrap().is_none());
}

/// Pipelined, the store knows which commits wrote to the WAL: a transaction that only read (a
/// lock request that parked, a `get_note`) says so, and the engine then gives its answers
/// without an fsync of their own. Before pipelining it cannot tell, and says it wrote.
#[test]
fn a_pipelined_commit_says_whether_it_wrote_anything() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = SqliteStore::open(&dir.path().join("state.db")).unwrap();
    s.begin().unwrap();
    s.commit().unwrap();
    assert!(s.last_commit_wrote(), "unknown before pipelining: assumed");
    let _syncer = s.pipeline().unwrap().unwrap();
    let note = |key: &str| NoteRow {
        key: key.into(),
        value: "v".into(),
        author: None,
        expires_at: None,
    };
    s.begin().unwrap();
    s.note_put(&note("a")).unwrap();
    s.commit().unwrap();
    assert!(s.last_commit_wrote());
    s.begin().unwrap();
    assert!(s.note_get("a").unwrap().is_some());
    assert!(s.note_get("b").unwrap().is_none());
    s.commit().unwrap();
    assert!(!s.last_commit_wrote(), "a read-only transaction");
    s.begin().unwrap();
    s.note_delete("a").unwrap();
    s.commit().unwrap();
    assert!(s.last_commit_wrote());
    // A write undone by its savepoint still counts (its pages were touched, and rows changed
    // since BEGIN): an fsync too many is safe, one too few is not.
    s.begin().unwrap();
    s.savepoint().unwrap();
    s.note_put(&note("c")).unwrap();
    s.rollback_to_savepoint();
    s.commit().unwrap();
    assert!(s.note_get("c").unwrap().is_none(), "undone");
    assert!(s.last_commit_wrote(), "a write undone by its savepoint");
    // A COMMIT that fails (here: outside a transaction) says it may have written, even after
    // one that wrote nothing.
    s.begin().unwrap();
    s.commit().unwrap();
    assert!(!s.last_commit_wrote());
    assert!(s.commit().is_err());
    assert!(s.last_commit_wrote(), "a failed COMMIT may have written");
}

/// A filtered history read looks through at most `HISTORY_SCAN_ROWS` entries per page: a rare
/// name behind a long history comes in short pages (the first ones empty), each with the cursor
/// where it stopped, and following them finds every match once, newest first. The history table
/// has no index but its rowid (one B-tree page per commit, whatever the names).
#[test]
fn a_filtered_history_read_looks_through_a_bounded_number_of_entries_per_page() {
    use super::history::HISTORY_SCAN_ROWS;
    let dir = tempfile::tempdir().unwrap();
    let mut s = SqliteStore::open(&dir.path().join("state.db")).unwrap();
    let indexes: i64 = s
        .conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'history'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(indexes, 0, "the history has no index but its rowid");
    // A page starts at its cursor: a seek in the rowid B-tree, not a walk from the newest.
    let plan: String = s
        .conn
        .query_row(
            &format!("EXPLAIN QUERY PLAN {}", super::history::READ_PAGE),
            [i64::MAX],
            |r| r.get(3),
        )
        .unwrap();
    assert!(
        plan.contains("SEARCH history") && plan.contains("rowid<"),
        "{plan}"
    );
    let row = |at: i64, name: &str| HistoryRow {
        id: 0,
        at,
        kind: "grant".into(),
        name: name.into(),
        agent_id: Some("a".into()),
        number: Some(at),
        reason: None,
        error: None,
    };
    let total = 2 * HISTORY_SCAN_ROWS as i64 + 500;
    s.begin().unwrap();
    for at in 0..total {
        // The rare name at the oldest end and in the middle.
        let name = if at == 3 || at == total / 2 {
            "rare"
        } else {
            "busy"
        };
        s.history_append(&row(at, name)).unwrap();
    }
    s.commit().unwrap();
    let mut q = HistoryQuery {
        name: Some("rare".into()),
        limit: 100,
        ..HistoryQuery::default()
    };
    let mut pages = Vec::new();
    loop {
        let (rows, next) = s.history_page(&q).unwrap();
        pages.push(rows.iter().map(|h| h.at).collect::<Vec<_>>());
        match next {
            Some(before) => q.before = Some(before),
            None => break,
        }
    }
    assert_eq!(
        pages.concat(),
        [total / 2, 3],
        "every match once, newest first"
    );
    assert_eq!(
        pages.len(),
        3,
        "a page per {HISTORY_SCAN_ROWS} entries: {pages:?}"
    );
    assert!(pages[0].is_empty(), "{pages:?}");
    // Unfiltered pages fill up to their limit whatever the budget.
    let (rows, next) = s
        .history_page(&HistoryQuery {
            limit: 1000,
            ..HistoryQuery::default()
        })
        .unwrap();
    assert_eq!(rows.len(), 1000);
    assert!(next.is_some());
    // `since` ends the read at the first older entry: no cursor past it.
    let (rows, next) = s
        .history_page(&HistoryQuery {
            name: Some("rare".into()),
            since: Some(total - 10),
            limit: 100,
            ..HistoryQuery::default()
        })
        .unwrap();
    assert!(rows.is_empty());
    assert_eq!(next, None);
}
