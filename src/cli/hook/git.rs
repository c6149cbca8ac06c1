//! `airlock hook git pre-commit`: refuses a commit that stages files another agent holds.
//!
//! "Us" is `AIRLOCK_AGENT`: in a Claude Code session the SessionStart hook exports it
//! (`claude:<session_id>`) to every Bash command, so the session may commit the files it locked
//! itself. Without it (a person at a terminal) every lock on a staged file is someone else's.
//! `git commit --no-verify` skips the guard, as it skips every pre-commit hook.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::config::{HookConfig, OnUnreachable};
use super::{file_lock, held_locks, resolve_path};
use crate::cli::client::Client;

/// Exit code that makes git abort the commit.
const REFUSE: i32 = 1;

/// Runs the guard in the current repository and returns git's verdict as an exit code.
pub async fn pre_commit(client: &Client) -> i32 {
    let top = match git(&["rev-parse", "--show-toplevel"]) {
        Ok(t) => PathBuf::from(t.trim_end_matches('\n')),
        Err(e) => {
            eprintln!("airlock pre-commit: {e}");
            return REFUSE;
        }
    };
    let staged = match git(&["diff", "--cached", "--name-only", "-z"]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("airlock pre-commit: {e}");
            return REFUSE;
        }
    };
    let files: Vec<&str> = staged.split('\0').filter(|f| !f.is_empty()).collect();
    if files.is_empty() {
        return 0;
    }
    let us = std::env::var("AIRLOCK_AGENT")
        .ok()
        .filter(|a| !a.is_empty());
    let cfg = HookConfig::load(&top).unwrap_or_else(|e| {
        eprintln!("airlock pre-commit: {e}; using the defaults");
        HookConfig::defaults(top.clone())
    });
    let locks = match held_locks(client).await {
        Ok(l) => l,
        Err(e) => {
            return match cfg.on_unreachable {
                OnUnreachable::Allow => {
                    eprintln!(
                        "airlock pre-commit: WARNING: {e}; committing without checking locks"
                    );
                    0
                }
                OnUnreachable::Deny => {
                    eprintln!(
                        "airlock pre-commit: {e}; this repository refuses commits while the \
                         daemon is unreachable (on_unreachable = \"deny\"); `git commit \
                         --no-verify` skips the check"
                    );
                    REFUSE
                }
            };
        }
    };
    let holders: HashMap<String, String> =
        locks.into_iter().map(|l| (l.name, l.agent_id)).collect();
    let conflicts = conflicts(&top, &files, &holders, us.as_deref());
    if conflicts.is_empty() {
        return 0;
    }
    eprintln!(
        "airlock: refusing the commit: {} staged file(s) are locked by another agent{}:",
        conflicts.len(),
        match &us {
            Some(a) => format!(" (this commit is by {a}, from AIRLOCK_AGENT)"),
            None => " (AIRLOCK_AGENT is not set, so every holder is another agent)".into(),
        }
    );
    for (file, holder) in &conflicts {
        eprintln!("  {file}  locked by {holder}");
    }
    eprintln!(
        "Wait until they are released (`airlock locks` shows them), unstage them \
         (`git restore --staged FILE`), or skip this check with `git commit --no-verify`."
    );
    REFUSE
}

/// The staged files (relative to `top`) whose `file:` lock is held by someone other than `us`,
/// with their holders.
fn conflicts(
    top: &Path,
    files: &[&str],
    holders: &HashMap<String, String>,
    us: Option<&str>,
) -> Vec<(String, String)> {
    files
        .iter()
        .filter_map(|f| {
            let name = file_lock(&resolve_path(top, Path::new(f)));
            let holder = holders.get(&name)?;
            (Some(holder.as_str()) != us).then(|| (f.to_string(), holder.clone()))
        })
        .collect()
}

/// Runs git in the current directory and returns its stdout.
fn git(args: &[&str]) -> Result<String, String> {
    let out = Command::new("git")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`git {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_other_agents_locks_conflict() {
        let tmp = tempfile::tempdir().unwrap();
        let top = std::fs::canonicalize(tmp.path()).unwrap();
        let holders = HashMap::from([
            (file_lock(&top.join("a.rs")), "claude:one".to_string()),
            (file_lock(&top.join("b.rs")), "claude:two".to_string()),
        ]);
        let files = ["a.rs", "b.rs", "c.rs"];
        let c = conflicts(&top, &files, &holders, Some("claude:one"));
        assert_eq!(c, [("b.rs".to_string(), "claude:two".to_string())]);
        assert_eq!(conflicts(&top, &files, &holders, None).len(), 2);
    }
}
