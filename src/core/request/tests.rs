//! The vocabulary's round trips: every request through its arguments, every answer through JSON.

use super::*;
use std::collections::BTreeMap;

#[test]
fn tool_names_are_distinct_and_found() {
    for t in Tool::ALL {
        assert_eq!(Tool::from_name(t.name()), Some(*t));
    }
    let mut names: Vec<_> = Tool::ALL.iter().map(|t| t.name()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), Tool::ALL.len());
}

#[test]
fn requests_round_trip_through_their_arguments() {
    let cases = [
        Request::LockResource(LockResource {
            name: "x".into(),
            agent_id: "a".into(),
            ttl_seconds: Some(5),
            wait_seconds: None,
            wake_token: Some("w".into()),
            shared: None,
            limit: None,
        }),
        Request::UnlockResource(UnlockResource {
            name: "x".into(),
            holder: Holder {
                lock_token: Some("t".into()),
                agent_id: None,
            },
        }),
        Request::ListLocks(ListPage::default()),
        Request::LeaveLine(LeaveLine {
            name: "x".into(),
            wake_token: "w".into(),
        }),
        Request::ListTasks(ListTasks {
            queue: None,
            state: Some("dead".into()),
            page: ListPage {
                limit: Some(5),
                cursor: Some("12".into()),
            },
        }),
        Request::PushTask(PushTask {
            queue: "q".into(),
            payload: "p".into(),
            author: None,
            priority: Some(1),
            delay_seconds: Some(5),
            max_attempts: Some(2),
            unique_key: Some("k".into()),
        }),
        Request::GetTask(TaskId { id: 3 }),
        Request::RetryTask(TaskId { id: 3 }),
        Request::ListQueues,
        Request::ListEvents,
        Request::Status(ListPage::default()),
    ];
    for r in cases {
        let back = Request::from_arguments(r.tool(), r.arguments()).unwrap();
        assert_eq!(back, r);
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), r);
    }
}

/// Every answer survives the trip through JSON (how a forwarded answer travels), the
/// untagged result shapes included.
#[test]
fn responses_round_trip() {
    let cases = [
        Response::LockResource(LockOutcome::Granted {
            locked: true,
            lock_token: "t".into(),
            expires_in_seconds: 9,
            fence: 3,
            fresh: false,
            expires_at: 0,
        }),
        Response::LockResource(LockOutcome::Contended {
            locked: false,
            held_by: Some("a".into()),
            expires_in_seconds: 9,
            wake_token: Some("w".into()),
            queue_position: Some(1),
            retry_with: Some(RetryWith {
                name: "x".into(),
                agent_id: "b".into(),
                ttl_seconds: 9,
                wait_seconds: 5,
                wake_token: "w".into(),
                shared: false,
                limit: None,
            }),
        }),
        Response::LockResources(LockSetOutcome::Granted {
            locked: true,
            tokens: BTreeMap::from([("x".to_string(), "t".to_string())]),
            fences: BTreeMap::from([("x".to_string(), 1)]),
            expires_in_seconds: 9,
            fresh: vec![],
            expires_at: 0,
        }),
        Response::LockResources(LockSetOutcome::Contended {
            locked: false,
            held_by: None,
            contended: "x".into(),
            expires_in_seconds: 0,
        }),
        Response::GetNote(GetNoteResult::Missing { found: false }),
        Response::GetNote(GetNoteResult::Found(NoteView {
            key: "k".into(),
            value: "v".into(),
            author: None,
            expires_in_seconds: Some(3),
        })),
        Response::RenewLock(Renewed::Yes {
            renewed: true,
            expires_in_seconds: 3,
            fence: 2,
        }),
        Response::RenewLock(Renewed::No {
            renewed: false,
            error: "no".into(),
        }),
        Response::ClaimNextTask(ClaimOutcome::Empty { claimed: false }),
        Response::ClaimNextTask(ClaimOutcome::Claimed {
            claimed: true,
            id: 4,
            payload: "p".into(),
            lease_token: "l".into(),
            lease_expires_in_seconds: 3,
            attempts: 1,
        }),
        Response::ListLocks(Listed {
            items: vec![],
            next_cursor: None,
            as_page: false,
            without: None,
        }),
        Response::ListLocks(Listed {
            items: vec![],
            next_cursor: Some("x".into()),
            as_page: true,
            without: None,
        }),
        Response::PushTask(Pushed {
            id: 1,
            duplicate: true,
        }),
        Response::GetTask(GetTaskResult::Missing { found: false }),
        Response::GetTask(GetTaskResult::Found {
            found: true,
            task: Box::new(TaskView {
                id: 1,
                queue: "q".into(),
                payload: "p".into(),
                priority: 0,
                state: "dead".into(),
                author: None,
                attempts: 2,
                lease_agent: None,
                lease_expires_in_seconds: None,
                ready_in_seconds: None,
                max_attempts: Some(2),
                unique_key: None,
                last_error: Some("boom".into()),
                result: None,
            }),
        }),
        Response::RetryTask(Retried {
            retried: false,
            error: Some("no".into()),
        }),
        Response::ListQueues(vec![]),
    ];
    for r in cases {
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(
            serde_json::from_str::<Response>(&text).unwrap(),
            r,
            "{text}"
        );
    }
}
