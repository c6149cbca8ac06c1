//! A client command for every tool, in shell idiom: human output by default, `--json` for
//! scripts, and exit codes a script can branch on (see [`super::exit`]).

use clap::Subcommand;
use serde_json::{json, Value};

use super::client::{Client, ClientError};
use super::exit;
use super::waits::{self, seconds, StatusLine, Wait};
use crate::core::request::*;

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
    Get { key: String },
    /// Store a note. VALUE `-` reads it from stdin.
    Set {
        key: String,
        value: String,
        #[arg(long)]
        author: Option<String>,
        /// Seconds until the note expires (default: never).
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// List every note.
    List,
    /// Delete a note (exit 1 if there was none).
    Delete { key: String },
    /// Compare-and-swap: store NEW only if the note holds EXPECTED ("" for absent); exit 1 if not.
    Cas {
        key: String,
        expected: String,
        new: String,
        #[arg(long)]
        author: Option<String>,
        #[arg(long)]
        ttl: Option<u64>,
    },
}

#[derive(Subcommand, Debug)]
pub enum CounterCmd {
    /// Add to a counter and print its new value (collision-free under concurrency).
    Incr {
        name: String,
        #[arg(long, default_value_t = 1, allow_hyphen_values = true)]
        by: i64,
    },
}

#[derive(Subcommand, Debug)]
pub enum AgentCmd {
    /// Announce (or keep alive) an agent; when it lapses its locks are released.
    Register {
        agent_id: String,
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// Remove an agent and release what it holds.
    Unregister { agent_id: String },
    /// List live agents.
    List,
}

#[derive(Subcommand, Debug)]
pub enum EventCmd {
    /// Bump an event's generation, waking every waiter; prints the new generation.
    Signal { name: String },
    /// Wait until the event's generation passes --since; prints it. Exit 1 if the wait ran out.
    Wait {
        name: String,
        /// The generation you last saw.
        #[arg(long, default_value_t = 0)]
        since: i64,
        /// Seconds to wait, or `forever` (past 50 s by calling again).
        #[arg(long, default_value = "25")]
        wait: Wait,
    },
    /// Forget signals up to now: later waits fire only on new signals.
    Clear { name: String },
}

#[derive(Subcommand, Debug)]
pub enum TaskCmd {
    /// Queue a task; prints its id. PAYLOAD `-` reads it from stdin.
    Push {
        queue: String,
        payload: String,
        #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
        priority: i64,
        #[arg(long)]
        author: Option<String>,
    },
    /// Claim the next task; prints id, lease token and payload. Exit 1 if the queue is empty.
    Claim {
        queue: String,
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
        id: i64,
        /// The lease_token from `task claim`.
        #[arg(long)]
        token: String,
    },
    /// Give a claimed task back (requeue) or fail it for good (--no-requeue). Exit 1 if the lease was lost.
    Fail {
        id: i64,
        #[arg(long)]
        token: String,
        #[arg(long)]
        no_requeue: bool,
    },
    /// Extend a claimed task's lease. Exit 1 if the lease was lost.
    Extend {
        id: i64,
        #[arg(long)]
        token: String,
        #[arg(long)]
        lease: Option<u64>,
    },
    /// List a queue's tasks.
    List { queue: String },
}

/// A client command: one per tool, in shell idiom (flattened into the top-level commands).
#[derive(Subcommand, Debug)]
pub enum ClientCmd {
    /// Take a lock and print its token (several names: all or nothing, one "NAME TOKEN" per line).
    Lock {
        #[arg(required = true)]
        names: Vec<String>,
        /// Seconds to wait for it, or `forever` (past 50 s by keeping one's place in line).
        #[arg(long, default_value = "0")]
        wait: Wait,
        /// Lock TTL in seconds (default 900).
        #[arg(long)]
        ttl: Option<u64>,
        /// The agent id to hold it as (default cli:USER@HOST:PID).
        #[arg(long, env = "AIRLOCK_AGENT")]
        agent: Option<String>,
    },
    /// Release a lock.
    Unlock {
        name: String,
        /// The lock_token from `airlock lock`.
        #[arg(long)]
        token: Option<String>,
        /// v1: release by holder identity instead.
        #[arg(long)]
        agent: Option<String>,
    },
    /// Extend a lock you hold.
    Renew {
        name: String,
        #[arg(long)]
        token: Option<String>,
        #[arg(long)]
        agent: Option<String>,
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
    /// Call any tool with JSON arguments (`-` reads them from stdin); prints its answer.
    Call { tool: String, args: Option<String> },
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

fn read_arg(v: String) -> Result<String, ClientError> {
    if v != "-" {
        return Ok(v);
    }
    let mut s = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
        .map_err(|e| ClientError::Refused(format!("cannot read stdin: {e}")))?;
    Ok(s)
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
        (None, None) => Err(ClientError::Refused(
            "give --token TOKEN (the lock_token from `airlock lock`) or --agent ID".into(),
        )),
    }
}

fn str_of(v: &Value, key: &str) -> String {
    match &v[key] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
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
            if names.len() == 1 {
                let line = StatusLine::start(&names[0]);
                let r = waits::acquire(c, &names[0], &agent, ttl, wait, Some(&line)).await?;
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
                    ttl_seconds: seconds(ttl),
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
            let r = c.request(&Request::ListLocks).await?;
            let rows = r.as_array().cloned().unwrap_or_default();
            let human = table(&rows, |l| {
                let mut row = format!("{}\t{}", str_of(l, "name"), super::status::holder_text(l));
                if !l["agent_id"].is_null() {
                    row.push_str(&format!(
                        "\texpires in {}s",
                        str_of(l, "expires_in_seconds")
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
            let r = c.request(&Request::ListAgents).await?;
            let rows = r.as_array().cloned().unwrap_or_default();
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
            let args: Value = match args {
                None => json!({}),
                Some(a) => serde_json::from_str(&read_arg(a)?).map_err(|e| {
                    ClientError::Refused(format!("ARGS must be a JSON object: {e}"))
                })?,
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
                let human = str_of(&r, "value");
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
                    value: read_arg(value)?,
                    author,
                    ttl_seconds: seconds(ttl),
                }))
                .await?;
            Answer::ok(r, "saved")
        }
        NoteCmd::List => {
            let r = c.request(&Request::ListNotes).await?;
            let rows = r.as_array().cloned().unwrap_or_default();
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
                    new_value: read_arg(new)?,
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
        } => {
            let r = c
                .request(&Request::PushTask(PushTask {
                    queue,
                    payload: read_arg(payload)?,
                    author,
                    priority: Some(priority),
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
        TaskCmd::Complete { id, token } => {
            let r = c
                .request(&Request::CompleteTask(Lease {
                    id,
                    lease_token: token,
                }))
                .await?;
            let why = format!("not completed: {}", lease_error(&r));
            Answer::yes_no(r.clone(), r["completed"] == json!(true), "completed", why)
        }
        TaskCmd::Fail {
            id,
            token,
            no_requeue,
        } => {
            let r = c
                .request(&Request::FailTask(FailTask {
                    id,
                    lease_token: token,
                    requeue: Some(!no_requeue),
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
        TaskCmd::List { queue } => {
            let r = c
                .request(&Request::ListTasks(ListTasks { queue: Some(queue) }))
                .await?;
            let rows = r.as_array().cloned().unwrap_or_default();
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
            eprintln!("airlock: {e}");
            e.exit_code()
        }
    }
}
