//! A client command for every tool, in shell idiom: human output by default, `--json` for
//! scripts, and exit codes a script can branch on (see [`super::exit`]).

use clap::Subcommand;
use serde_json::{json, Value};

use super::client::{Client, ClientError};
use super::exit;
use super::show;
use super::waits::{self, seconds, StatusLine, Wait};
use crate::core::request::*;
use crate::core::LockMode;

/// The TTL `airlock lock`, `airlock renew` and `airlock run` give a lock unless `--ttl` says
/// otherwise: short, so a script that dies holding a lock blocks others for a minute, not the
/// MCP tools' 15. A longer hold renews (`airlock renew`, as `airlock run` does by itself) or
/// asks for more with `--ttl`.
pub const DEFAULT_LOCK_TTL: u64 = 60;

/// The agent id a command acts as when `--agent` and `AIRLOCK_AGENT` are not given:
/// `cli:USER@HOST:PID`, unique per process so two shells never share a lock by accident.
pub fn default_agent(kind: &str) -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "user".into());
    format!("{kind}:{user}@{}:{}", hostname(), std::process::id())
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into our buffer.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[derive(Subcommand, Debug)]
pub enum NoteCmd {
    /// Print a note's value (exit 1 if there is none).
    Get {
        /// The note's key (1 to 512 bytes).
        key: String,
    },
    /// Store a note. VALUE `-` reads it from stdin.
    Set {
        /// The note's key (1 to 512 bytes).
        key: String,
        /// The value (up to 256 KiB); `-` reads it from stdin.
        value: String,
        /// Who wrote it, shown by `note list` and `status`.
        #[arg(long)]
        author: Option<String>,
        /// Seconds until the note expires (default: never).
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// List every note.
    List,
    /// Delete a note (exit 1 if there was none).
    Delete {
        /// The note's key (1 to 512 bytes).
        key: String,
    },
    /// Compare-and-swap: store NEW only if the note holds EXPECTED ("" for absent); exit 1 if not.
    Cas {
        /// The note's key (1 to 512 bytes).
        key: String,
        /// The value the note must hold now ("" for no note).
        expected: String,
        /// The value to store if it does; `-` reads it from stdin.
        new: String,
        /// Who wrote it.
        #[arg(long)]
        author: Option<String>,
        /// Seconds until the note expires (default: never).
        #[arg(long)]
        ttl: Option<u64>,
    },
}

#[derive(Subcommand, Debug)]
pub enum CounterCmd {
    /// Add to a counter and print its new value (collision-free under concurrency).
    Incr {
        /// The counter's name (created at 0).
        name: String,
        /// How much to add (may be negative).
        #[arg(long, default_value_t = 1, allow_hyphen_values = true)]
        by: i64,
    },
}

#[derive(Subcommand, Debug)]
pub enum AgentCmd {
    /// Announce (or keep alive) an agent; when it lapses its locks are released.
    Register {
        /// The agent's id, e.g. agent:claude-session-abc.
        agent_id: String,
        /// Seconds until it lapses unless registered again (default 60).
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// Remove an agent and release what it holds.
    Unregister {
        /// The agent's id.
        agent_id: String,
    },
    /// List live agents.
    List,
}

#[derive(Subcommand, Debug)]
pub enum EventCmd {
    /// Bump an event's generation, waking every waiter; prints the new generation.
    Signal {
        /// The event's name.
        name: String,
    },
    /// Wait until the event's generation passes --since; prints it. Exit 1 if the wait ran out.
    Wait {
        /// The event's name.
        name: String,
        /// The generation you last saw.
        #[arg(long, default_value_t = 0)]
        since: i64,
        /// Seconds to wait, or `forever` (past 50 s by calling again).
        #[arg(long, default_value = "25")]
        wait: Wait,
    },
    /// Forget signals up to now: later waits fire only on new signals.
    Clear {
        /// The event's name.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum TaskCmd {
    /// Queue a task; prints its id. PAYLOAD `-` reads it from stdin.
    Push {
        /// The queue's name.
        queue: String,
        /// The task (up to 256 KiB of text, e.g. JSON); `-` reads it from stdin.
        payload: String,
        /// Higher is claimed first; equal priorities go in push order.
        #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
        priority: i64,
        /// Who queued it.
        #[arg(long)]
        author: Option<String>,
        /// Seconds before it may be claimed.
        #[arg(long)]
        delay: Option<u64>,
        /// Failed attempts (or lapsed leases) before it is dead.
        #[arg(long)]
        max_attempts: Option<i64>,
        /// While a task with this key is pending or claimed in the queue, print its id instead.
        #[arg(long)]
        unique_key: Option<String>,
    },
    /// Claim the next task; prints id, lease token and payload. Exit 1 if the queue is empty.
    Claim {
        /// The queue's name.
        queue: String,
        /// The agent id to hold the lease as (default cli:USER@HOST:PID).
        #[arg(long, env = "AIRLOCK_AGENT")]
        agent: Option<String>,
        /// Lease length in seconds (default 120).
        #[arg(long)]
        lease: Option<u64>,
        /// Seconds to wait for a task if none is pending (at most 50).
        #[arg(long, default_value_t = 0)]
        wait: u64,
    },
    /// Mark a claimed task done. Exit 1 if the lease was lost.
    Complete {
        /// The task's id (from `task claim`).
        id: i64,
        /// The lease_token from `task claim`.
        #[arg(long)]
        token: String,
        /// What the task produced (`-` reads it from stdin).
        #[arg(long)]
        result: Option<String>,
    },
    /// Give a claimed task back (requeue) or fail it for good (--no-requeue). Exit 1 if the lease was lost.
    Fail {
        /// The task's id (from `task claim`).
        id: i64,
        /// The lease_token from `task claim`.
        #[arg(long)]
        token: String,
        /// Fail it for good instead of putting it back in the queue.
        #[arg(long)]
        no_requeue: bool,
        /// Why it failed.
        #[arg(long)]
        error: Option<String>,
    },
    /// Extend a claimed task's lease. Exit 1 if the lease was lost.
    Extend {
        /// The task's id (from `task claim`).
        id: i64,
        /// The lease_token from `task claim`.
        #[arg(long)]
        token: String,
        /// The new lease length in seconds, from now (default 120).
        #[arg(long)]
        lease: Option<u64>,
    },
    /// List a queue's tasks (--state: only pending, claimed, completed, failed or dead ones).
    List {
        /// The queue's name.
        queue: String,
        /// Only tasks in this state: pending, claimed, completed, failed or dead.
        #[arg(long)]
        state: Option<String>,
    },
    /// Show one task as JSON. Exit 1 if there is none with that id.
    Get {
        /// The task id.
        id: i64,
    },
    /// Put a dead (or failed) task back to pending. Exit 1 if refused.
    Retry {
        /// The task id.
        id: i64,
    },
    /// List the queues with their tasks counted by state.
    Queues,
}

/// A client command: one per tool, in shell idiom (flattened into the top-level commands).
#[derive(Subcommand, Debug)]
pub enum ClientCmd {
    /// Take a lock and print its token (several names: all or nothing, one "NAME TOKEN" per line).
    Lock {
        /// The lock's name, e.g. file:/abs/path or npm-install (several: all or nothing).
        #[arg(required = true)]
        names: Vec<String>,
        /// Seconds to wait for it, or `forever` (past 50 s by keeping one's place in line).
        #[arg(long, default_value = "0")]
        wait: Wait,
        /// Lock TTL in seconds [default: 60; renew with `airlock renew`, or use `airlock run`,
        /// which renews while its command runs].
        #[arg(long)]
        ttl: Option<u64>,
        /// The agent id to hold it as (default cli:USER@HOST:PID).
        #[arg(long, env = "AIRLOCK_AGENT")]
        agent: Option<String>,
    },
    /// Release a lock.
    Unlock {
        /// The lock's name.
        name: String,
        /// The lock_token from `airlock lock`.
        #[arg(long)]
        token: Option<String>,
        /// v1: release by holder identity instead.
        #[arg(long)]
        agent: Option<String>,
    },
    /// Extend a lock you hold: it expires TTL seconds from now.
    Renew {
        /// The lock's name.
        name: String,
        /// The lock_token from `airlock lock`.
        #[arg(long)]
        token: Option<String>,
        /// v1: renew by holder identity instead.
        #[arg(long)]
        agent: Option<String>,
        /// Seconds from now until it expires [default: 60].
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// List held locks.
    Locks,
    /// Shared notes: get, set, list, delete, cas.
    #[command(subcommand)]
    Note(NoteCmd),
    /// Collision-free counters.
    #[command(subcommand)]
    Counter(CounterCmd),
    /// Presence: register, unregister, list.
    #[command(subcommand)]
    Agent(AgentCmd),
    /// List live agents.
    Agents,
    /// Generation-counted events: signal, wait, clear.
    #[command(subcommand)]
    Event(EventCmd),
    /// The leased task queue: push, claim, complete, fail, extend, list.
    #[command(subcommand)]
    Task(TaskCmd),
    /// The audit history, newest first: grants, releases (and why), renewals, task changes,
    /// signals.
    History(super::history::HistoryArgs),
    /// Call any tool with JSON arguments (`-` reads them from stdin); prints its answer.
    #[command(after_help = super::output::call_help())]
    Call {
        /// The tool's name (listed below).
        tool: String,
        /// Its arguments as a JSON object, or `-` to read them from stdin [default: {}].
        args: Option<String>,
    },
}

/// What a command answered: the JSON for `--json`, the text for humans, and the exit code.
struct Answer {
    json: Value,
    human: String,
    /// Said on stderr when the answer is "no" (exit 1), even with --json.
    why: Option<String>,
    code: i32,
}

impl Answer {
    fn ok(json: Value, human: impl Into<String>) -> Answer {
        Answer {
            json,
            human: human.into(),
            why: None,
            code: exit::OK,
        }
    }

    fn no(json: Value, why: impl Into<String>) -> Answer {
        Answer {
            json,
            human: String::new(),
            why: Some(why.into()),
            code: exit::NO,
        }
    }

    fn yes_no(json: Value, yes: bool, human: &str, why: impl Into<String>) -> Answer {
        if yes {
            Answer::ok(json, human)
        } else {
            Answer::no(json, why)
        }
    }
}

/// The most a command reads from stdin: past the request limit nothing could be sent anyway.
const STDIN_LIMIT: usize = crate::http::MAX_BODY_BYTES;

/// `v`, or stdin when `v` is `-` (at most [`STDIN_LIMIT`] bytes are read).
fn read_arg(v: String) -> Result<String, ClientError> {
    if v != "-" {
        return Ok(v);
    }
    let mut buf = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(std::io::stdin(), STDIN_LIMIT as u64 + 1),
        &mut buf,
    )
    .map_err(|e| ClientError::Usage(format!("cannot read stdin: {e}")))?;
    if buf.len() > STDIN_LIMIT {
        return Err(ClientError::Usage(format!(
            "stdin holds more than {STDIN_LIMIT} bytes (1 MiB), more than the daemon takes in one \
             request; nothing was sent"
        )));
    }
    String::from_utf8(buf).map_err(|_| ClientError::Usage("stdin is not UTF-8 text".into()))
}

/// A note value or task payload (`-` reads stdin), checked against the daemon's limit here so
/// an oversized one is refused as what it is, and never sent.
fn read_value(v: String, field: &str) -> Result<String, ClientError> {
    let v = read_arg(v)?;
    crate::core::check_value(field, &v).map_err(|e| ClientError::Usage(e.to_string()))?;
    Ok(v)
}

fn proof(token: Option<String>, agent: Option<String>) -> Result<Holder, ClientError> {
    match (token, agent) {
        (Some(t), _) => Ok(Holder {
            lock_token: Some(t),
            agent_id: None,
        }),
        (None, Some(a)) => Ok(Holder {
            lock_token: None,
            agent_id: Some(a),
        }),
        (None, None) => Err(ClientError::Usage(
            "give --token TOKEN (the lock_token from `airlock lock`) or --agent ID".into(),
        )),
    }
}

/// A field of an answer as it is, for a single value printed alone (see [`show::for_stdout`]).
fn raw_of(v: &Value, key: &str) -> String {
    match &v[key] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A field of an answer for a line of human output: escaped, so it stays on its line and
/// cannot drive the terminal (see [`show`]).
fn str_of(v: &Value, key: &str) -> String {
    show::escape(&raw_of(v, key))
}

/// Every item of a list, page after page (the daemon answers a long list in pages), as the
/// contract's plain array.
async fn list_all(c: &Client, make: impl Fn(ListPage) -> Request) -> Result<Value, ClientError> {
    let mut all = Vec::new();
    let mut page = ListPage {
        limit: Some(1000),
        cursor: None,
    };
    loop {
        let answer = match c.request(&make(page.clone())).await {
            // A daemon from before pages: it answers the whole list at once.
            Err(ClientError::Refused(m)) if all.is_empty() && m.starts_with("limit:") => {
                c.request(&make(ListPage::default())).await?
            }
            other => other?,
        };
        all.extend(rows_of(&answer));
        match answer.get("next_cursor").and_then(Value::as_str) {
            Some(cursor) => page.cursor = Some(cursor.to_string()),
            None => return Ok(Value::Array(all)),
        }
    }
}

/// The items of a list answer: the plain array, or a page's `items`.
fn rows_of(r: &Value) -> Vec<Value> {
    r.as_array()
        .or_else(|| r["items"].as_array())
        .cloned()
        .unwrap_or_default()
}

/// How a lock holder holds it, for a human: nothing for the plain exclusive lock, else
/// `\tshared` or `\tshared, limit N`.
pub fn hold_mode(l: &Value) -> String {
    match (l["mode"].as_str(), l["limit"].as_i64()) {
        (_, Some(n)) => format!("\tshared, limit {n}"),
        (Some("shared"), None) => "\tshared".into(),
        _ => String::new(),
    }
}

fn table(rows: &[Value], fmt: impl Fn(&Value) -> String) -> String {
    if rows.is_empty() {
        return "(none)".into();
    }
    rows.iter().map(fmt).collect::<Vec<_>>().join("\n")
}

async fn answer(c: &Client, cmd: ClientCmd) -> Result<Answer, ClientError> {
    Ok(match cmd {
        ClientCmd::Lock {
            names,
            wait,
            ttl,
            agent,
        } => {
            let agent = agent.unwrap_or_else(|| default_agent("cli"));
            let ttl = Some(ttl.unwrap_or(DEFAULT_LOCK_TTL));
            if names.len() == 1 {
                let line = StatusLine::start(&names[0]);
                let r = waits::acquire(
                    c,
                    &names[0],
                    LockMode::EXCLUSIVE,
                    &agent,
                    ttl,
                    wait,
                    Some(&line),
                )
                .await?;
                line.finish();
                if r["locked"] == json!(true) {
                    // The token alone on stdout, so `T=$(airlock lock NAME)` works.
                    Answer::ok(r.clone(), str_of(&r, "lock_token"))
                } else {
                    let why = format!(
                        "not acquired: {} is {}",
                        names[0],
                        waits::contended_detail(&r)
                    );
                    Answer::no(r, why)
                }
            } else {
                let r = waits::acquire_set(c, &names, &agent, ttl, wait).await?;
                if r["locked"] == json!(true) {
                    let human = r["tokens"]
                        .as_object()
                        .map(|m| {
                            m.iter()
                                .map(|(k, v)| format!("{k} {}", v.as_str().unwrap_or_default()))
                                .collect::<Vec<_>>()
                                .join("\n")
                        })
                        .unwrap_or_default();
                    Answer::ok(r, human)
                } else {
                    let why = format!(
                        "not acquired: {} is held by {}",
                        str_of(&r, "contended"),
                        str_of(&r, "held_by")
                    );
                    Answer::no(r, why)
                }
            }
        }
        ClientCmd::Unlock { name, token, agent } => {
            let r = c
                .request(&Request::UnlockResource(UnlockResource {
                    name,
                    holder: proof(token, agent)?,
                }))
                .await?;
            let why = format!(
                "not released: {}",
                r["error"]
                    .as_str()
                    .unwrap_or("you do not hold it (wrong token, or it expired)")
            );
            Answer::yes_no(r.clone(), r["released"] == json!(true), "released", why)
        }
        ClientCmd::Renew {
            name,
            token,
            agent,
            ttl,
        } => {
            let r = c
                .request(&Request::RenewLock(RenewLock {
                    name,
                    holder: proof(token, agent)?,
                    ttl_seconds: seconds(Some(ttl.unwrap_or(DEFAULT_LOCK_TTL))),
                }))
                .await?;
            let human = format!(
                "renewed; expires in {}s",
                r["expires_in_seconds"].as_i64().unwrap_or(0)
            );
            let why = format!("not renewed: {}", str_of(&r, "error"));
            Answer::yes_no(r.clone(), r["renewed"] == json!(true), &human, why)
        }
        ClientCmd::Locks => {
            let r = list_all(c, Request::ListLocks).await?;
            let rows = rows_of(&r);
            let human = table(&rows, |l| {
                let mut row = format!("{}\t{}", str_of(l, "name"), super::status::holder_text(l));
                if !l["agent_id"].is_null() {
                    row.push_str(&format!(
                        "\texpires in {}s{}",
                        str_of(l, "expires_in_seconds"),
                        hold_mode(l)
                    ));
                }
                for place in super::status::line_rows(l) {
                    row.push_str(&format!("\n\t{place}"));
                }
                row
            });
            Answer::ok(r, human)
        }
        ClientCmd::Note(n) => note(c, n).await?,
        ClientCmd::History(h) => {
            let (r, human) = super::history::answer(c, h).await?;
            Answer::ok(r, human)
        }
        ClientCmd::Counter(CounterCmd::Incr { name, by }) => {
            let r = c
                .request(&Request::IncrementCounter(IncrementCounter {
                    name,
                    by: Some(by),
                }))
                .await?;
            let human = str_of(&r, "value");
            Answer::ok(r, human)
        }
        ClientCmd::Agent(AgentCmd::Register { agent_id, ttl }) => {
            let r = c
                .request(&Request::RegisterAgent(RegisterAgent {
                    agent_id,
                    ttl_seconds: seconds(ttl),
                }))
                .await?;
            let human = format!(
                "registered; expires in {}s",
                str_of(&r, "expires_in_seconds")
            );
            Answer::ok(r, human)
        }
        ClientCmd::Agent(AgentCmd::Unregister { agent_id }) => {
            let r = c
                .request(&Request::UnregisterAgent(AgentId { agent_id }))
                .await?;
            Answer::ok(r, "unregistered")
        }
        ClientCmd::Agents | ClientCmd::Agent(AgentCmd::List) => {
            let r = list_all(c, Request::ListAgents).await?;
            let rows = rows_of(&r);
            let human = table(&rows, |a| {
                format!(
                    "{}\texpires in {}s",
                    str_of(a, "agent_id"),
                    str_of(a, "expires_in_seconds")
                )
            });
            Answer::ok(r, human)
        }
        ClientCmd::Event(EventCmd::Signal { name }) => {
            let r = c.request(&Request::SignalEvent(EventName { name })).await?;
            let human = str_of(&r, "generation");
            Answer::ok(r, human)
        }
        ClientCmd::Event(EventCmd::Wait { name, since, wait }) => {
            let r = waits::wait_event(c, &name, since, wait).await?;
            let human = str_of(&r, "generation");
            let fired = r["fired"] == json!(true);
            let why = format!("timed out: {name} is still at generation {human}");
            Answer::yes_no(r, fired, &human, why)
        }
        ClientCmd::Event(EventCmd::Clear { name }) => {
            let r = c.request(&Request::ClearEvent(EventName { name })).await?;
            Answer::ok(r, "cleared")
        }
        ClientCmd::Task(t) => task(c, t).await?,
        ClientCmd::Call { tool, args } => {
            let tools = super::output::tool_names();
            if !tools.contains(&tool.as_str()) {
                return Err(ClientError::Usage(format!(
                    "unknown tool {tool:?}; the tools are: {}",
                    tools.join(", ")
                )));
            }
            let args: Value = match args {
                None => json!({}),
                Some(a) => serde_json::from_str(&read_arg(a)?)
                    .map_err(|e| ClientError::Usage(format!("ARGS must be a JSON object: {e}")))?,
            };
            let r = c.call(&tool, args).await?;
            let human = serde_json::to_string_pretty(&r).unwrap_or_default();
            Answer::ok(r, human)
        }
    })
}

async fn note(c: &Client, n: NoteCmd) -> Result<Answer, ClientError> {
    Ok(match n {
        NoteCmd::Get { key } => {
            let r = c
                .request(&Request::GetNote(NoteKey { key: key.clone() }))
                .await?;
            if r["found"] == json!(false) {
                Answer::no(r, format!("not found: no note {key}"))
            } else {
                let human = show::for_stdout(&raw_of(&r, "value"));
                Answer::ok(r, human)
            }
        }
        NoteCmd::Set {
            key,
            value,
            author,
            ttl,
        } => {
            let r = c
                .request(&Request::SetNote(SetNote {
                    key,
                    value: read_value(value, "value")?,
                    author,
                    ttl_seconds: seconds(ttl),
                }))
                .await?;
            Answer::ok(r, "saved")
        }
        NoteCmd::List => {
            let r = list_all(c, |page| {
                Request::ListNotes(ListNotes { page, values: None })
            })
            .await?;
            let rows = rows_of(&r);
            let human = table(&rows, |n| {
                format!("{}\t{}", str_of(n, "key"), str_of(n, "value"))
            });
            Answer::ok(r, human)
        }
        NoteCmd::Delete { key } => {
            let r = c
                .request(&Request::DeleteNote(NoteKey { key: key.clone() }))
                .await?;
            let why = format!("not found: no note {key}");
            Answer::yes_no(r.clone(), r["deleted"] == json!(true), "deleted", why)
        }
        NoteCmd::Cas {
            key,
            expected,
            new,
            author,
            ttl,
        } => {
            let r = c
                .request(&Request::SetNoteIf(SetNoteIf {
                    key: key.clone(),
                    expected_value: expected,
                    new_value: read_value(new, "new_value")?,
                    author,
                    ttl_seconds: seconds(ttl),
                }))
                .await?;
            let why = format!("not swapped: {key} does not hold the expected value");
            Answer::yes_no(r.clone(), r["swapped"] == json!(true), "swapped", why)
        }
    })
}

async fn task(c: &Client, t: TaskCmd) -> Result<Answer, ClientError> {
    Ok(match t {
        TaskCmd::Push {
            queue,
            payload,
            priority,
            author,
            delay,
            max_attempts,
            unique_key,
        } => {
            let r = c
                .request(&Request::PushTask(PushTask {
                    queue,
                    payload: read_value(payload, "payload")?,
                    author,
                    priority: Some(priority),
                    delay_seconds: seconds(delay),
                    max_attempts,
                    unique_key,
                }))
                .await?;
            let human = str_of(&r, "id");
            Answer::ok(r, human)
        }
        TaskCmd::Claim {
            queue,
            agent,
            lease,
            wait,
        } => {
            let agent = agent.unwrap_or_else(|| default_agent("cli"));
            let r = c
                .request(&Request::ClaimNextTask(ClaimNextTask {
                    queue: queue.clone(),
                    agent_id: agent,
                    lease_seconds: seconds(lease),
                    wait_seconds: seconds(Some(wait)),
                }))
                .await?;
            if r["claimed"] == json!(true) {
                let human = format!(
                    "id {}\nlease_token {}\npayload {}",
                    str_of(&r, "id"),
                    str_of(&r, "lease_token"),
                    str_of(&r, "payload")
                );
                Answer::ok(r, human)
            } else {
                Answer::no(r, format!("no task: {queue} has nothing pending"))
            }
        }
        TaskCmd::Complete { id, token, result } => {
            let r = c
                .request(&Request::CompleteTask(Lease {
                    id,
                    lease_token: token,
                    result: result.map(read_arg).transpose()?,
                }))
                .await?;
            let why = format!("not completed: {}", lease_error(&r));
            Answer::yes_no(r.clone(), r["completed"] == json!(true), "completed", why)
        }
        TaskCmd::Fail {
            id,
            token,
            no_requeue,
            error,
        } => {
            let r = c
                .request(&Request::FailTask(FailTask {
                    id,
                    lease_token: token,
                    requeue: Some(!no_requeue),
                    error,
                }))
                .await?;
            let why = format!("not failed: {}", lease_error(&r));
            let human = if no_requeue { "failed" } else { "requeued" };
            Answer::yes_no(r.clone(), r["failed"] == json!(true), human, why)
        }
        TaskCmd::Extend { id, token, lease } => {
            let r = c
                .request(&Request::ExtendLease(ExtendLease {
                    id,
                    lease_token: token,
                    lease_seconds: seconds(lease),
                }))
                .await?;
            let human = format!(
                "extended; lease expires in {}s",
                str_of(&r, "lease_expires_in_seconds")
            );
            let why = format!("not extended: {}", lease_error(&r));
            Answer::yes_no(r.clone(), r["extended"] == json!(true), &human, why)
        }
        TaskCmd::List { queue, state } => {
            let r = list_all(c, |page| {
                Request::ListTasks(ListTasks {
                    queue: Some(queue.clone()),
                    state: state.clone(),
                    page,
                })
            })
            .await?;
            let rows = rows_of(&r);
            let human = table(&rows, |t| {
                format!(
                    "{}\t{}\tpriority {}\t{}",
                    str_of(t, "id"),
                    str_of(t, "state"),
                    str_of(t, "priority"),
                    str_of(t, "payload")
                )
            });
            Answer::ok(r, human)
        }
        TaskCmd::Get { id } => {
            let r = c.request(&Request::GetTask(TaskId { id })).await?;
            if r["found"] == json!(true) {
                let human = r.to_string();
                Answer::ok(r, human)
            } else {
                Answer::no(r, format!("no task with id {id}"))
            }
        }
        TaskCmd::Retry { id } => {
            let r = c.request(&Request::RetryTask(TaskId { id })).await?;
            let why = format!("not retried: {}", str_of(&r, "error"));
            Answer::yes_no(r.clone(), r["retried"] == json!(true), "retried", why)
        }
        TaskCmd::Queues => {
            let r = c.request(&Request::ListQueues).await?;
            let rows = r.as_array().cloned().unwrap_or_default();
            let human = table(&rows, |q| {
                format!(
                    "{}	pending {}	claimed {}	completed {}	failed {}	dead {}",
                    str_of(q, "queue"),
                    str_of(q, "pending"),
                    str_of(q, "claimed"),
                    str_of(q, "completed"),
                    str_of(q, "failed"),
                    str_of(q, "dead")
                )
            });
            Answer::ok(r, human)
        }
    })
}

fn lease_error(r: &Value) -> String {
    r["error"]
        .as_str()
        .unwrap_or("the lease is not yours any more (wrong token, or it expired)")
        .to_string()
}

/// Runs one client command and returns its exit code.
pub async fn run(c: &Client, cmd: ClientCmd, json_out: bool) -> i32 {
    match answer(c, cmd).await {
        Ok(a) => {
            if json_out {
                println!("{}", a.json);
            } else if !a.human.is_empty() {
                println!("{}", a.human);
            }
            if let Some(why) = a.why {
                eprintln!("airlock: {why}");
            }
            a.code
        }
        Err(e) => {
            super::output::print_error(json_out, "airlock", &e.to_string(), e.exit_code());
            e.exit_code()
        }
    }
}
