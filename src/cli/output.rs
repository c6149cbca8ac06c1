//! What every client command shares before and after talking to the daemon: where the daemon is
//! (`--url`, `AIRLOCK_URL`, else `AIRLOCK_LISTEN`, else the default), how an error is printed
//! (plain, or JSON with `--json`), and the tool names for `airlock call`.

use serde_json::json;

use super::client::DEFAULT_URL;

/// The daemon's URL for client commands: `--url`/`AIRLOCK_URL` if given (and not empty), else
/// `http://` + `AIRLOCK_LISTEN` (what a daemon started in the same environment listens on),
/// else [`DEFAULT_URL`]. The error says what is wrong with the address and names its source.
pub fn resolve_url(flag: Option<&str>) -> Result<String, String> {
    if let Some(url) = flag.map(str::trim).filter(|u| !u.is_empty()) {
        return check_url(url, "--url");
    }
    let env = std::env::var("AIRLOCK_URL").unwrap_or_default();
    if !env.trim().is_empty() {
        return check_url(env.trim(), "AIRLOCK_URL");
    }
    let listen = std::env::var("AIRLOCK_LISTEN").unwrap_or_default();
    let listen = listen.trim();
    if listen.is_empty() {
        return Ok(DEFAULT_URL.to_string());
    }
    check_url(&format!("http://{}", reachable(listen)), "AIRLOCK_LISTEN")
}

/// A listening address as a client reaches it: the wildcard addresses mean this machine.
fn reachable(listen: &str) -> String {
    if let Some(port) = listen.strip_prefix("0.0.0.0:") {
        format!("127.0.0.1:{port}")
    } else if let Some(port) = listen.strip_prefix("[::]:") {
        format!("[::1]:{port}")
    } else {
        listen.to_string()
    }
}

fn check_url(url: &str, source: &str) -> Result<String, String> {
    let bad = |why: &str| {
        format!(
            "{source} must be the daemon's http:// URL, e.g. http://127.0.0.1:27183; {why}, got \
             {url:?}"
        )
    };
    if !url.contains("://") {
        return Err(bad("it has no scheme (add http://)"));
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| bad(&format!("it is not a URL ({e})")))?;
    if parsed.scheme() != "http" && parsed.scheme() != "https" {
        return Err(bad("the scheme must be http"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("it names no host"));
    }
    Ok(url.trim_end_matches('/').to_string())
}

/// Prints an error the way the command's output is printed: `airlock: MESSAGE` on stderr, or
/// with `--json` one JSON object `{"error": MESSAGE, "exit_code": N}` on stderr, so a script
/// that reads stdout for answers never mistakes an error for one.
pub fn print_error(json: bool, prefix: &str, message: &str, code: i32) {
    if json {
        eprintln!("{}", json!({"error": message, "exit_code": code}));
    } else {
        eprintln!("{prefix}: {message}");
    }
}

/// Parses the command line; with `--json` anywhere in it, a usage error is printed as JSON too
/// (help and version are printed as clap prints them). `Err` holds the exit code.
pub fn parse_args() -> Result<super::Cli, i32> {
    use clap::Parser;
    let json = std::env::args_os().any(|a| a == "--json");
    match super::Cli::try_parse() {
        Ok(cli) => Ok(cli),
        Err(e) if json && e.use_stderr() => {
            let message = e.kind().to_string();
            let detail = e.to_string();
            let detail = detail.trim().trim_start_matches("error: ");
            let text = if detail.is_empty() {
                message
            } else {
                detail.to_string()
            };
            print_error(true, "airlock", &text, super::exit::USAGE);
            Err(super::exit::USAGE)
        }
        Err(e) => {
            let _ = e.print();
            Err(if e.use_stderr() {
                super::exit::USAGE
            } else {
                super::exit::OK
            })
        }
    }
}

/// The names of every tool, for `airlock call --help` and its "unknown tool" error.
pub fn tool_names() -> Vec<&'static str> {
    crate::core::Tool::ALL
        .iter()
        .filter(|t| t.is_mcp_tool())
        .map(|t| t.name())
        .collect()
}

/// `airlock call --help`'s list of tools.
pub fn call_help() -> String {
    format!(
        "Tools: {}.\n\nExample: airlock call get_note '{{\"key\": \"build\"}}'",
        tool_names().join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_need_a_scheme_and_a_host() {
        assert_eq!(
            check_url("http://127.0.0.1:9/", "--url").as_deref(),
            Ok("http://127.0.0.1:9")
        );
        let e = check_url("127.0.0.1:27311", "--url").unwrap_err();
        assert!(e.contains("no scheme") && e.contains("--url"), "{e}");
        let e = check_url("notaurl", "AIRLOCK_URL").unwrap_err();
        assert!(e.contains("no scheme"), "{e}");
        let e = check_url("ftp://h:1", "--url").unwrap_err();
        assert!(e.contains("http"), "{e}");
        assert_eq!(reachable("0.0.0.0:5"), "127.0.0.1:5");
        assert_eq!(reachable("[::]:5"), "[::1]:5");
        assert_eq!(reachable("localhost:5"), "localhost:5");
    }
}
