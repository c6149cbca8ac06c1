//! Where state lives and how callers are authenticated: the state directory, the token, and the
//! one-daemon-per-directory lock. Defaults, then environment (`AIRLOCK_*`), then flags.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// The default address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:27183";

/// Reads `--listen` (`AIRLOCK_LISTEN`): an IP address and port, or `localhost:PORT`, which means
/// 127.0.0.1 (the README's examples use it). Other host names are refused: the daemon must know
/// whether it is on loopback, and a name could resolve anywhere.
pub fn parse_listen(listen: &str) -> Result<std::net::SocketAddr, String> {
    let listen = listen.trim();
    if let Ok(addr) = listen.parse() {
        return Ok(addr);
    }
    if let Some((host, port)) = listen.rsplit_once(':') {
        if host.eq_ignore_ascii_case("localhost") {
            if let Ok(port) = port.parse::<u16>() {
                return Ok(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
            }
        }
    }
    Err(format!(
        "--listen (AIRLOCK_LISTEN) must be IP:PORT or localhost:PORT, e.g. 127.0.0.1:27183, got \
         {listen:?}"
    ))
}

/// Connections in a daemon's PostgreSQL pool unless `--pg-pool-size` says otherwise.
pub const DEFAULT_PG_POOL_SIZE: usize = 8;
/// The most `--pg-pool-size` accepts.
pub const MAX_PG_POOL_SIZE: usize = 256;

/// Where the daemon keeps its state (`--store`, `AIRLOCK_STORE`).
#[derive(Clone, PartialEq, Eq)]
pub enum StoreSpec {
    /// `state.db` in the state directory: one daemon, no external service (the default).
    Sqlite,
    /// A PostgreSQL database shared by every daemon pointed at it.
    Postgres { url: String, pool_size: usize },
}

impl StoreSpec {
    /// Reads `--store` and `--pg-pool-size`. The error names the flag and the rule.
    pub fn parse(store: &str, pool_size: usize) -> Result<StoreSpec, String> {
        let store = store.trim();
        if store.is_empty() || store == "sqlite" {
            return Ok(StoreSpec::Sqlite);
        }
        if !(store.starts_with("postgres://") || store.starts_with("postgresql://")) {
            return Err(format!(
                "--store (AIRLOCK_STORE) must be `sqlite` or a URL starting with postgres:// \
                 or postgresql://, got {:?}",
                redact_url(store)
            ));
        }
        if !(1..=MAX_PG_POOL_SIZE).contains(&pool_size) {
            return Err(format!(
                "--pg-pool-size (AIRLOCK_PG_POOL_SIZE) must be between 1 and {MAX_PG_POOL_SIZE}, \
                 got {pool_size}"
            ));
        }
        Ok(StoreSpec::Postgres {
            url: store.to_string(),
            pool_size,
        })
    }
}

/// A URL with any password replaced by `***`, for messages and logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // Not a URL (a libpq `key=value` string, say): mask any password= in it.
        return url
            .split(' ')
            .map(mask_password_param)
            .collect::<Vec<_>>()
            .join(" ");
    };
    let before_query = rest.split_once('?').map_or(rest, |(b, _)| b);
    // A password holding an unencoded `?` splits too early: then the userinfo ends at the last
    // `@` of the whole URL (which may over-mask, never under-mask).
    if !before_query.contains('@') && before_query.contains(':') {
        if let Some(at) = rest.rfind('@') {
            let (userinfo, host) = (&rest[..at], &rest[at + 1..]);
            let user = userinfo.split(':').next().unwrap_or_default();
            return format!("{scheme}://{user}:***@{}", redact_query_only(host));
        }
    }
    let mut out = format!("{scheme}://");
    // The userinfo ends at the last `@` before the query, so a password holding an unencoded
    // `/` or `@` is still masked whole.
    match before_query.rsplit_once('@') {
        Some((userinfo, host)) => {
            match userinfo.split_once(':') {
                Some((user, _)) => out.push_str(&format!("{user}:***")),
                None => out.push_str(userinfo),
            }
            out.push('@');
            out.push_str(host);
        }
        None => out.push_str(before_query),
    }
    if let Some((_, query)) = rest.split_once('?') {
        out.push_str(&redact_query_only(&format!("?{query}")));
    }
    out
}

/// `host/db?…` with any `password=` parameter masked.
fn redact_query_only(s: &str) -> String {
    match s.split_once('?') {
        Some((head, query)) => format!(
            "{head}?{}",
            query
                .split('&')
                .map(mask_password_param)
                .collect::<Vec<_>>()
                .join("&")
        ),
        None => s.to_string(),
    }
}

/// `password=…` (any case) as `password=***`; anything else unchanged.
fn mask_password_param(kv: &str) -> String {
    match kv.split_once('=') {
        Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
        _ => kv.to_string(),
    }
}

impl fmt::Debug for StoreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreSpec::Sqlite => f.write_str("sqlite"),
            StoreSpec::Postgres { url, pool_size } => {
                write!(f, "{} (pool {pool_size})", redact_url(url))
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Io(String),
    #[error(
        "another airlock daemon is already running with state directory {dir}{pid}; stop it, \
         or set AIRLOCK_HOME to another directory"
    )]
    AlreadyRunning { dir: String, pid: String },
}

/// The state directory: `AIRLOCK_HOME`, else `~/.airlock`.
pub fn home_dir() -> PathBuf {
    if let Some(h) = std::env::var_os("AIRLOCK_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"));
    home.join(".airlock")
}

/// This process's effective user id.
fn my_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Creates the state directory if needed and makes it private (0700). Refuses a directory owned
/// by another user, or one that other users can write to: they could have planted its files
/// (a token they know, links to files of ours).
pub fn prepare_home(dir: &Path) -> Result<(), ConfigError> {
    fs::create_dir_all(dir).map_err(|e| {
        ConfigError::Io(format!(
            "cannot create the state directory {}: {e}",
            dir.display()
        ))
    })?;
    let handle = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(dir)
        .map_err(|e| {
            ConfigError::Io(format!(
                "cannot open the state directory {}: {e}",
                dir.display()
            ))
        })?;
    let meta = handle.metadata().map_err(|e| {
        ConfigError::Io(format!(
            "cannot read the state directory {}: {e}",
            dir.display()
        ))
    })?;
    check_home_meta(dir, meta.uid(), meta.mode(), my_uid())?;
    // Through the open directory, so the check and the change are about the same directory.
    handle
        .set_permissions(fs::Permissions::from_mode(0o700))
        .map_err(|e| {
            ConfigError::Io(format!(
                "cannot make the state directory {} private (mode 0700): {e}",
                dir.display()
            ))
        })?;
    Ok(())
}

/// The state directory's owner must be `me`, and only its owner may write to it.
fn check_home_meta(dir: &Path, owner: u32, mode: u32, me: u32) -> Result<(), ConfigError> {
    if owner != me {
        return Err(ConfigError::Io(format!(
            "the state directory {} belongs to user id {owner}, not to this user (id {me}); \
             airlock keeps its token and state only in a directory of its own user. Set \
             AIRLOCK_HOME to a directory you own",
            dir.display()
        )));
    }
    if mode & 0o022 != 0 {
        return Err(ConfigError::Io(format!(
            "the state directory {} can be written by other users (mode {:04o}), so its files \
             cannot be trusted; check what is in it, then `chmod 700` it (or set AIRLOCK_HOME \
             to a new directory)",
            dir.display(),
            mode & 0o7777
        )));
    }
    Ok(())
}

/// Opens a file of the state directory without following a symbolic link, and checks that it
/// is a regular file of this user with one name. `what` names it in errors.
fn open_state_file(path: &Path, options: &mut OpenOptions, what: &str) -> std::io::Result<File> {
    options.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC);
    let file = options.open(path).map_err(|e| {
        if e.raw_os_error() == Some(libc::ELOOP) {
            std::io::Error::other(format!(
                "{what} {} is a symbolic link; airlock does not follow links in its state \
                 directory (remove the link)",
                path.display()
            ))
        } else {
            e
        }
    })?;
    check_state_meta(path, &file.metadata()?, what)?;
    Ok(file)
}

fn check_state_meta(path: &Path, meta: &fs::Metadata, what: &str) -> std::io::Result<()> {
    let refuse = |why: String| {
        Err(std::io::Error::other(format!(
            "{what} {} {why}; airlock refuses it",
            path.display()
        )))
    };
    if meta.file_type().is_symlink() {
        return refuse(
            "is a symbolic link, and airlock does not follow links in its state directory".into(),
        );
    }
    if !meta.file_type().is_file() {
        return refuse("is not a regular file".into());
    }
    if meta.uid() != my_uid() {
        return refuse(format!("belongs to another user (id {})", meta.uid()));
    }
    if meta.nlink() > 1 {
        return refuse(format!(
            "has {} names (hard links), so it may be another file's",
            meta.nlink()
        ));
    }
    Ok(())
}

/// Checks the database files before SQLite opens them (it follows links): `state.db` and its
/// `-wal`, `-shm` and `-journal` files, where they exist, must be regular files of this user,
/// not links.
pub fn check_database_files(db: &Path) -> Result<(), ConfigError> {
    let name = db
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let path = db.with_file_name(format!("{name}{suffix}"));
        match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(ConfigError::Io(format!(
                    "cannot inspect {}: {e}",
                    path.display()
                )))
            }
            Ok(meta) => check_state_meta(&path, &meta, "the database file")
                .map_err(|e| ConfigError::Io(e.to_string()))?,
        }
    }
    Ok(())
}

/// Opens (creating it 0600 if needed) a private log file in the state directory for appending,
/// refusing a link, and making a loosened one private again.
pub fn open_private_log(path: &Path) -> std::io::Result<File> {
    let file = open_state_file(
        path,
        OpenOptions::new().create(true).append(true).mode(0o600),
        "the log file",
    )?;
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

/// A bearer token. Never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    pub fn new(s: String) -> Self {
        Token(s)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Constant-time comparison with what a caller presented.
    pub fn matches(&self, presented: &[u8]) -> bool {
        crate::core::secrets_equal(self.0.as_bytes(), presented)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// The daemon's token: `AIRLOCK_TOKEN` if set, else `<home>/token`, created on first run from
/// 256 bits of OS randomness with mode 0600. Either must pass [`check_token_strength`].
pub fn load_or_create_token(dir: &Path) -> Result<Token, ConfigError> {
    if let Some(t) = env_token() {
        check_token_strength(t.expose())
            .map_err(|why| ConfigError::Io(format!("AIRLOCK_TOKEN is refused: {why}")))?;
        return Ok(t);
    }
    let path = dir.join("token");
    match open_state_file(
        &path,
        OpenOptions::new().write(true).create_new(true).mode(0o600),
        "the token file",
    ) {
        Ok(mut f) => {
            let bytes: [u8; 32] = rand::random();
            let token = hex::encode(bytes);
            f.write_all(token.as_bytes())
                .and_then(|_| f.sync_all())
                .map_err(|e| ConfigError::Io(format!("cannot write {}: {e}", path.display())))?;
            Ok(Token(token))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let mut f = open_state_file(&path, OpenOptions::new().read(true), "the token file")
                .map_err(|e| ConfigError::Io(format!("cannot read the token: {e}")))?;
            // Keep it private even if someone loosened it (through the open file: no link to
            // follow).
            let _ = f.set_permissions(fs::Permissions::from_mode(0o600));
            let token = token_from(&mut f, &path)?;
            check_token_strength(token.expose()).map_err(|why| {
                ConfigError::Io(format!(
                    "the token in {} is refused: {why}. Delete the file and restart the daemon \
                     to make a new one",
                    path.display()
                ))
            })?;
            Ok(token)
        }
        Err(e) => Err(ConfigError::Io(format!(
            "cannot create the token file: {}",
            if e.kind() == std::io::ErrorKind::Other {
                e.to_string()
            } else {
                format!("{}: {e}", path.display())
            }
        ))),
    }
}

/// Fewest characters of a token written in hex (4 bits each): 128 bits.
pub const MIN_HEX_TOKEN_CHARS: usize = 32;
/// Fewest characters of any other token (base64's 6 bits each): 128 bits.
pub const MIN_TOKEN_CHARS: usize = 22;
/// Fewest distinct characters in a token, against `aaaa…`-like ones.
pub const MIN_DISTINCT_TOKEN_CHARS: usize = 8;

/// Whether a token is strong enough to guard the daemon: at least 128 bits if it were random.
/// The rule: only the characters `A-Z a-z 0-9 + / = - _ . ~`; at least 32 of them when all are
/// hex digits, else at least 22; and at least 8 different characters. The token airlock makes
/// (64 hex digits) and `openssl rand -hex 16` / `-base64 16` pass.
pub fn check_token_strength(token: &str) -> Result<(), String> {
    if let Some(c) = token
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "+/=-_.~".contains(*c)))
    {
        return Err(format!(
            "it holds {:?}; a token may use only A-Z, a-z, 0-9 and + / = - _ . ~",
            c.escape_debug().to_string()
        ));
    }
    let hex = token.chars().all(|c| c.is_ascii_hexdigit());
    let need = if hex {
        MIN_HEX_TOKEN_CHARS
    } else {
        MIN_TOKEN_CHARS
    };
    if token.len() < need {
        return Err(format!(
            "it is {} characters long; a token needs at least 128 bits: {MIN_HEX_TOKEN_CHARS} \
             hex digits, or {MIN_TOKEN_CHARS} characters of base64 (make one with \
             `openssl rand -hex 32`)",
            token.len()
        ));
    }
    let mut distinct: Vec<char> = token.chars().collect();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() < MIN_DISTINCT_TOKEN_CHARS {
        return Err(format!(
            "it uses only {} different characters; a token needs at least \
             {MIN_DISTINCT_TOKEN_CHARS} (make one with `openssl rand -hex 32`)",
            distinct.len()
        ));
    }
    Ok(())
}

fn env_token() -> Option<Token> {
    std::env::var("AIRLOCK_TOKEN")
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .map(Token)
}

/// The token read from an open token file (trimmed); an empty one is an error.
fn token_from(f: &mut File, path: &Path) -> Result<Token, ConfigError> {
    let mut s = String::new();
    // A token is short: read at most 4 KiB of whatever the file is.
    f.take(4096)
        .read_to_string(&mut s)
        .map_err(|e| ConfigError::Io(format!("cannot read {}: {e}", path.display())))?;
    let t = s.trim().to_string();
    if t.is_empty() {
        return Err(ConfigError::Io(format!(
            "the token file {} is empty; delete it and restart the daemon to make a new one",
            path.display()
        )));
    }
    Ok(Token(t))
}

fn read_token_file(path: &Path) -> Result<Token, ConfigError> {
    let mut f = File::open(path)
        .map_err(|e| ConfigError::Io(format!("cannot read {}: {e}", path.display())))?;
    token_from(&mut f, path)
}

/// For clients: `AIRLOCK_TOKEN`, else `<home>/token` if it exists.
pub fn client_token() -> Option<Token> {
    env_token().or_else(|| read_token_file(&home_dir().join("token")).ok())
}

/// Holds the exclusive lock on `<home>/daemon.lock` for the daemon's life.
pub struct DaemonLock {
    _file: File,
}

/// Takes the one-daemon-per-directory lock, or explains who holds it.
pub fn lock_home(dir: &Path) -> Result<DaemonLock, ConfigError> {
    let path = dir.join("daemon.lock");
    let mut file = open_state_file(
        &path,
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600),
        "the lock file",
    )
    .map_err(|e| match e.kind() {
        std::io::ErrorKind::Other => ConfigError::Io(e.to_string()),
        _ => ConfigError::Io(format!("cannot open {}: {e}", path.display())),
    })?;
    // SAFETY: flock on a file descriptor we own; no memory is shared.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let mut pid = String::new();
        let _ = file.read_to_string(&mut pid);
        let pid = pid.trim();
        return Err(ConfigError::AlreadyRunning {
            dir: dir.display().to_string(),
            pid: if pid.is_empty() {
                String::new()
            } else {
                format!(" (pid {pid})")
            },
        });
    }
    let _ = file.set_len(0);
    let _ = write!(file, "{}", std::process::id());
    let _ = file.sync_all();
    Ok(DaemonLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_take_localhost_but_no_other_name() {
        assert_eq!(
            parse_listen("localhost:27315").unwrap().to_string(),
            "127.0.0.1:27315"
        );
        assert_eq!(parse_listen("[::1]:5").unwrap().to_string(), "[::1]:5");
        assert_eq!(parse_listen("0.0.0.0:5").unwrap().to_string(), "0.0.0.0:5");
        for bad in ["example.com:80", "localhost", "localhost:x", "127.0.0.1"] {
            let e = parse_listen(bad).unwrap_err();
            assert!(
                e.contains("--listen") && e.contains("localhost:PORT"),
                "{e}"
            );
        }
    }

    #[test]
    fn token_debug_is_redacted_and_compare_is_exact() {
        let t = Token("secret".into());
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
        assert!(t.matches(b"secret"));
        assert!(!t.matches(b"secreT"));
        assert!(!t.matches(b"secret2"));
    }

    #[test]
    fn weak_tokens_are_refused_and_generated_ones_pass() {
        assert!(check_token_strength(&hex::encode(rand::random::<[u8; 32]>())).is_ok());
        assert!(check_token_strength("0123456789abcdef0123456789abcdef").is_ok());
        assert!(check_token_strength("env-token-0123456789abcdef").is_ok());
        assert!(check_token_strength("q83vEjRWeJq83vEjRWeJqA==").is_ok());
        for weak in [
            "x",
            "0123456789abcdef0123456789abcde", // 31 hex digits: 124 bits
            "Abcdefghijklmnopqrstu",           // 21 characters
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "abababababababababababababababab",
        ] {
            let e = check_token_strength(weak).unwrap_err();
            assert!(e.contains("characters"), "{weak}: {e}");
        }
        let e = check_token_strength("0123456789abcdef0123456789abcdef\u{1b}").unwrap_err();
        assert!(e.contains("may use only"), "{e}");
        let e = check_token_strength("0123456789abcdef 0123456789abcdef").unwrap_err();
        assert!(e.contains("may use only"), "{e}");
    }

    #[test]
    fn a_home_of_another_user_or_writable_by_others_is_refused() {
        let p = Path::new("/h");
        assert!(check_home_meta(p, 1000, 0o40700, 1000).is_ok());
        assert!(check_home_meta(p, 1000, 0o40755, 1000).is_ok());
        let e = check_home_meta(p, 65534, 0o40700, 1000)
            .unwrap_err()
            .to_string();
        assert!(e.contains("belongs to user id 65534"), "{e}");
        let e = check_home_meta(p, 1000, 0o40777, 1000)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("written by other users") && e.contains("0777"),
            "{e}"
        );
        assert!(check_home_meta(p, 1000, 0o40720, 1000).is_err());
    }

    #[test]
    fn store_specs_are_parsed_and_passwords_never_shown() {
        assert_eq!(StoreSpec::parse("sqlite", 8), Ok(StoreSpec::Sqlite));
        assert_eq!(StoreSpec::parse("", 8), Ok(StoreSpec::Sqlite));
        let pg = StoreSpec::parse("postgres://u:hunter2@db:5432/airlock", 4).unwrap();
        assert_eq!(
            format!("{pg:?}"),
            "postgres://u:***@db:5432/airlock (pool 4)"
        );
        let e = StoreSpec::parse("mysql://x", 8).unwrap_err();
        assert!(e.contains("--store"), "{e}");
        let e = StoreSpec::parse("postgres://u:hunter2@db/a", 0).unwrap_err();
        assert!(
            e.contains("--pg-pool-size") && !e.contains("hunter2"),
            "{e}"
        );
        assert_eq!(redact_url("postgresql://u@h/d"), "postgresql://u@h/d");
        assert_eq!(redact_url("postgres://u:p@h"), "postgres://u:***@h");
        assert_eq!(
            redact_url("postgres://u:pa/s@s@h:5/db?sslmode=disable&password=x&a=b"),
            "postgres://u:***@h:5/db?sslmode=disable&password=***&a=b"
        );
        assert_eq!(
            redact_url("postgres://h/db?user=u&PASSWORD=x"),
            "postgres://h/db?user=u&PASSWORD=***"
        );
        assert_eq!(
            redact_url("postgres://u:pa?ss@h/db?password=y"),
            "postgres://u:***@h/db?password=***"
        );
        assert_eq!(redact_url("host=h password=s3cret"), "host=h password=***");
        assert_eq!(
            redact_url("postgres://u@[::1]:5432/db"),
            "postgres://u@[::1]:5432/db"
        );
    }
}
