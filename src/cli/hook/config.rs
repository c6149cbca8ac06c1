//! `.airlock.toml`, the repository's optional rules for the hooks: which shell commands take
//! which locks, which paths need no lock, how long to wait, and when a session's locks go.
//!
//! Precedence: defaults, then the file, then `AIRLOCK_HOOK_*` environment variables, then flags.

use std::path::{Path, PathBuf};

use globset::{Glob, GlobMatcher, GlobSet, GlobSetBuilder};
use serde::Deserialize;
use toml::Spanned;

/// The file's name, looked for from the session's directory up to the repository root.
pub const FILE_NAME: &str = ".airlock.toml";
/// How long a hook waits for a contended lock by default.
pub const DEFAULT_WAIT_SECONDS: u64 = 30;
/// The daemon parks a call for at most 50 s, and Claude Code kills a hook after 60 s.
pub const MAX_WAIT_SECONDS: u64 = 50;
/// How long a session's presence outlives its last hook call: the bound on how long a crashed
/// session keeps its locks.
pub const DEFAULT_PRESENCE_TTL_SECONDS: u64 = 600;
/// Smallest and largest presence TTL accepted.
pub const PRESENCE_TTL_RANGE: (u64, u64) = (2, 86_400);

/// When a session's file locks are released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Release {
    /// At the end of each turn (`Stop`): other sessions get the files between turns.
    Turn,
    /// At the end of the session (`SessionEnd`), or when its presence lapses.
    Session,
}

/// What a hook does when the daemon cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnUnreachable {
    /// Let the tool call go ahead, with a visible warning (the default: a hook must never brick
    /// an editor).
    Allow,
    /// Refuse the tool call.
    Deny,
}

/// One rule: a shell command or a file path that matches takes `lock`.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Glob over each simple command of a Bash command line (`npm install*`).
    command: Option<GlobMatcher>,
    /// A string that, found in a Bash command line or in an edited file's path relative to the
    /// repository root, makes the rule apply (`migrations/`).
    touches: Option<String>,
    pub lock: String,
}

/// The hooks' settings for one repository.
#[derive(Debug, Clone)]
pub struct HookConfig {
    /// The repository root: where `.airlock.toml` is, or the git work tree's top, or the cwd.
    pub root: PathBuf,
    pub wait_seconds: u64,
    pub release: Release,
    pub presence_ttl_seconds: u64,
    pub on_unreachable: OnUnreachable,
    ignore: GlobSet,
    rules: Vec<Rule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    wait_seconds: Option<Spanned<i64>>,
    release: Option<Release>,
    presence_ttl_seconds: Option<Spanned<i64>>,
    on_unreachable: Option<OnUnreachable>,
    #[serde(default)]
    ignore: Vec<Spanned<String>>,
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    command: Option<Spanned<String>>,
    touches: Option<String>,
    lock: String,
}

/// What is wrong with a config file (or a setting from the environment).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl HookConfig {
    /// The defaults, for a repository rooted at `root` with no config file.
    pub fn defaults(root: PathBuf) -> HookConfig {
        HookConfig {
            root,
            wait_seconds: DEFAULT_WAIT_SECONDS,
            release: Release::Turn,
            presence_ttl_seconds: DEFAULT_PRESENCE_TTL_SECONDS,
            on_unreachable: OnUnreachable::Allow,
            ignore: GlobSet::empty(),
            rules: Vec::new(),
        }
    }

    /// Finds and reads the config for a session working in `cwd`, then applies the
    /// `AIRLOCK_HOOK_*` environment variables.
    pub fn load(cwd: &Path) -> Result<HookConfig, ConfigError> {
        let (root, file) = find_root(cwd);
        let mut config = match file {
            Some(path) => {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
                HookConfig::parse(&text, root)
                    .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?
            }
            None => HookConfig::defaults(root),
        };
        config.apply_env(|k| std::env::var(k).ok())?;
        Ok(config)
    }

    /// Parses the text of a config file for a repository rooted at `root`.
    pub fn parse(text: &str, root: PathBuf) -> Result<HookConfig, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| format!("line {}: ", line_of(text, s.start)))
                .unwrap_or_default();
            ConfigError(format!("{at}{}", e.message().trim_end()))
        })?;
        let mut c = HookConfig::defaults(root);
        let at = |offset: usize| format!("line {}", line_of(text, offset));
        if let Some(w) = raw.wait_seconds {
            c.wait_seconds = check_wait(*w.get_ref())
                .map_err(|e| ConfigError(format!("{}: {e}", at(w.span().start))))?;
        }
        if let Some(t) = raw.presence_ttl_seconds {
            c.presence_ttl_seconds = check_presence_ttl(*t.get_ref())
                .map_err(|e| ConfigError(format!("{}: {e}", at(t.span().start))))?;
        }
        if let Some(r) = raw.release {
            c.release = r;
        }
        if let Some(o) = raw.on_unreachable {
            c.on_unreachable = o;
        }
        let mut ignore = GlobSetBuilder::new();
        for pattern in &raw.ignore {
            let glob = Glob::new(pattern.get_ref()).map_err(|e| {
                ConfigError(format!("{}: ignore pattern: {e}", at(pattern.span().start)))
            })?;
            ignore.add(glob);
        }
        c.ignore = ignore
            .build()
            .map_err(|e| ConfigError(format!("ignore patterns: {e}")))?;
        for spanned in &raw.rule {
            let line = at(spanned.span().start);
            let r = spanned.get_ref();
            if r.command.is_none() && r.touches.is_none() {
                return Err(ConfigError(format!(
                    "{line}: a [[rule]] needs `command` (a glob over a shell command) or `touches` \
                     (a string in a command or a file path), or both"
                )));
            }
            let lock = r.lock.trim();
            if lock.is_empty() {
                return Err(ConfigError(format!(
                    "{line}: rule `lock` must not be empty"
                )));
            }
            let command = match &r.command {
                Some(p) => Some(
                    Glob::new(p.get_ref().trim())
                        .map_err(|e| {
                            ConfigError(format!("{}: rule command: {e}", at(p.span().start)))
                        })?
                        .compile_matcher(),
                ),
                None => None,
            };
            c.rules.push(Rule {
                command,
                touches: r.touches.clone().filter(|t| !t.is_empty()),
                lock: lock.to_string(),
            });
        }
        Ok(c)
    }

    /// Applies `AIRLOCK_HOOK_WAIT_SECONDS`, `AIRLOCK_HOOK_PRESENCE_TTL_SECONDS`,
    /// `AIRLOCK_HOOK_RELEASE` (`turn`|`session`) and `AIRLOCK_HOOK_ON_UNREACHABLE`
    /// (`allow`|`deny`).
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let int = |name: &str, v: &str| {
            v.trim()
                .parse::<i64>()
                .map_err(|_| ConfigError(format!("{name} must be a whole number, got {v:?}")))
        };
        if let Some(v) = var("AIRLOCK_HOOK_WAIT_SECONDS") {
            self.wait_seconds = check_wait(int("AIRLOCK_HOOK_WAIT_SECONDS", &v)?)
                .map_err(|e| ConfigError(format!("AIRLOCK_HOOK_WAIT_SECONDS: {e}")))?;
        }
        if let Some(v) = var("AIRLOCK_HOOK_PRESENCE_TTL_SECONDS") {
            self.presence_ttl_seconds =
                check_presence_ttl(int("AIRLOCK_HOOK_PRESENCE_TTL_SECONDS", &v)?)
                    .map_err(|e| ConfigError(format!("AIRLOCK_HOOK_PRESENCE_TTL_SECONDS: {e}")))?;
        }
        if let Some(v) = var("AIRLOCK_HOOK_RELEASE") {
            self.release = match v.trim() {
                "turn" => Release::Turn,
                "session" => Release::Session,
                other => {
                    return Err(ConfigError(format!(
                        "AIRLOCK_HOOK_RELEASE must be `turn` or `session`, got {other:?}"
                    )))
                }
            };
        }
        if let Some(v) = var("AIRLOCK_HOOK_ON_UNREACHABLE") {
            self.on_unreachable = match v.trim() {
                "allow" => OnUnreachable::Allow,
                "deny" => OnUnreachable::Deny,
                other => {
                    return Err(ConfigError(format!(
                        "AIRLOCK_HOOK_ON_UNREACHABLE must be `allow` or `deny`, got {other:?}"
                    )))
                }
            };
        }
        Ok(())
    }

    /// `path` relative to the root, when it is inside it.
    pub fn relative<'a>(&self, path: &'a Path) -> Option<&'a Path> {
        path.strip_prefix(&self.root).ok()
    }

    /// Whether an edit of `path` (absolute, resolved) needs no lock.
    pub fn ignored(&self, path: &Path) -> bool {
        self.relative(path)
            .is_some_and(|rel| self.ignore.is_match(rel))
    }

    /// The rule locks an edit of `path` takes besides its own `file:` lock.
    pub fn path_locks(&self, path: &Path) -> Vec<String> {
        let rel = self
            .relative(path)
            .map(|r| r.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.to_string_lossy().into_owned());
        let mut out: Vec<String> = self
            .rules
            .iter()
            .filter(|r| r.touches.as_ref().is_some_and(|t| rel.contains(t.as_str())))
            .map(|r| r.lock.clone())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The locks a Bash command line takes: rules whose `command` glob matches one of its simple
    /// commands, or whose `touches` string occurs in it.
    pub fn command_locks(&self, command: &str) -> Vec<String> {
        let parts = simple_commands(command);
        let mut out: Vec<String> = self
            .rules
            .iter()
            .filter(|r| {
                r.command
                    .as_ref()
                    .is_some_and(|g| parts.iter().any(|p| g.is_match(p)))
                    || r.touches
                        .as_ref()
                        .is_some_and(|t| command.contains(t.as_str()))
            })
            .map(|r| r.lock.clone())
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// The simple commands of a command line, split at `&&`, `||`, `;`, `|` and newlines, each
/// trimmed, with leading `VAR=value` assignments dropped (`CI=1 npm install` is `npm install`).
fn simple_commands(line: &str) -> Vec<String> {
    line.split(['\n', ';', '|', '&'])
        .map(|s| {
            let mut words: Vec<&str> = s.split_whitespace().collect();
            while words.first().is_some_and(|w| {
                w.split_once('=').is_some_and(|(k, _)| {
                    !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                })
            }) {
                words.remove(0);
            }
            words.join(" ")
        })
        .filter(|s| !s.is_empty())
        .collect()
}

fn check_wait(v: i64) -> Result<u64, String> {
    if !(0..=MAX_WAIT_SECONDS as i64).contains(&v) {
        return Err(format!(
            "wait_seconds must be between 0 and {MAX_WAIT_SECONDS} (the hook must answer within \
             Claude Code's 60 s hook timeout), got {v}"
        ));
    }
    Ok(v as u64)
}

fn check_presence_ttl(v: i64) -> Result<u64, String> {
    let (lo, hi) = PRESENCE_TTL_RANGE;
    if !(lo as i64..=hi as i64).contains(&v) {
        return Err(format!(
            "presence_ttl_seconds must be between {lo} and {hi}, got {v}"
        ));
    }
    Ok(v as u64)
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// The repository root for `cwd` and the config file, if any: the nearest ancestor holding
/// `.airlock.toml`, not above the git work tree's top; else that top; else `cwd`.
pub fn find_root(cwd: &Path) -> (PathBuf, Option<PathBuf>) {
    let cwd = std::fs::canonicalize(cwd).unwrap_or_else(|_| cwd.to_path_buf());
    for dir in cwd.ancestors() {
        let file = dir.join(FILE_NAME);
        if file.is_file() {
            return (dir.to_path_buf(), Some(file));
        }
        if dir.join(".git").exists() {
            return (dir.to_path_buf(), None);
        }
    }
    (cwd, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<HookConfig, ConfigError> {
        HookConfig::parse(text, PathBuf::from("/repo"))
    }

    #[test]
    fn a_full_file() {
        let c = parse(
            r#"
wait_seconds = 10
release = "session"
presence_ttl_seconds = 120
on_unreachable = "deny"
ignore = ["target/**", "**/*.generated.rs"]

[[rule]]
command = "npm install*"
lock = "cmd:install"

[[rule]]
command = "pip install*"
lock = "cmd:install"

[[rule]]
touches = "migrations/"
lock = "migrations"
"#,
        )
        .unwrap();
        assert_eq!(c.wait_seconds, 10);
        assert_eq!(c.release, Release::Session);
        assert_eq!(c.presence_ttl_seconds, 120);
        assert_eq!(c.on_unreachable, OnUnreachable::Deny);
        assert!(c.ignored(Path::new("/repo/target/debug/x")));
        assert!(c.ignored(Path::new("/repo/src/a.generated.rs")));
        assert!(!c.ignored(Path::new("/repo/src/a.rs")));
        assert!(!c.ignored(Path::new("/elsewhere/target/x")));
        assert_eq!(c.command_locks("npm install lodash"), ["cmd:install"]);
        assert_eq!(
            c.command_locks("cd web && CI=1 npm install"),
            ["cmd:install"]
        );
        assert_eq!(
            c.command_locks("pip install -r r.txt; ls migrations/"),
            ["cmd:install", "migrations"]
        );
        assert!(c.command_locks("npm test").is_empty());
        assert_eq!(
            c.path_locks(Path::new("/repo/db/migrations/001.sql")),
            ["migrations"]
        );
        assert!(c.path_locks(Path::new("/repo/src/a.rs")).is_empty());
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse("wait_seconds = 10\n\nwait_seconds = 99\n").unwrap_err();
        assert!(e.0.contains("line 3"), "{e}");
        let e = parse("release = \"turn\"\nwait_seconds = 99\n").unwrap_err();
        assert!(
            e.0.contains("line 2") && e.0.contains("between 0 and 50"),
            "{e}"
        );
        let e = parse("\n\nrelease = \"sometimes\"\n").unwrap_err();
        assert!(e.0.contains("line 3"), "{e}");
        let e = parse("colour = 1\n").unwrap_err();
        assert!(e.0.contains("line 1") && e.0.contains("colour"), "{e}");
        let e = parse("[[rule]]\nlock = \"x\"\n").unwrap_err();
        assert!(e.0.contains("line 1") && e.0.contains("command"), "{e}");
        let e = parse("presence_ttl_seconds = 0\n").unwrap_err();
        assert!(e.0.contains("presence_ttl_seconds must be between"), "{e}");
        let e = parse("ignore = [\"a[\"]\n").unwrap_err();
        assert!(e.0.contains("line 1") && e.0.contains("ignore"), "{e}");
    }

    #[test]
    fn environment_overrides_the_file() {
        let mut c = parse("wait_seconds = 10\n").unwrap();
        c.apply_env(|k| (k == "AIRLOCK_HOOK_WAIT_SECONDS").then(|| "3".to_string()))
            .unwrap();
        assert_eq!(c.wait_seconds, 3);
        let e = c
            .apply_env(|k| (k == "AIRLOCK_HOOK_RELEASE").then(|| "never".to_string()))
            .unwrap_err();
        assert!(e.0.contains("AIRLOCK_HOOK_RELEASE"), "{e}");
    }
}
