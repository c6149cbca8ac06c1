//! `airlock install-service` / `uninstall-service`: an always-on daemon under the user's
//! service manager. Linux: a systemd user unit; macOS: a LaunchAgent. `--print` shows what
//! would be written and run without touching anything. Re-installing is idempotent.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::exit;
use crate::config;

/// The systemd user unit's name.
pub const UNIT_NAME: &str = "airlock.service";
/// The LaunchAgent's label (v2).
pub const LAUNCH_LABEL: &str = "com.adamorad.airlock";
/// Labels the v1 daemon's LaunchAgent may have; unloaded on install so v2 gets the port.
pub const V1_LAUNCH_LABELS: &[&str] = &["com.adamorad.airlock.v1", "com.airlock.daemon"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Platform {
    Systemd,
    Launchd,
}

fn platform() -> Platform {
    if cfg!(target_os = "macos") {
        Platform::Launchd
    } else {
        Platform::Systemd
    }
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
}

fn exe() -> PathBuf {
    service_exe().0
}

/// Whether `p` is a build output (`…/target/debug/airlock`), which `cargo clean` or the next
/// build removes or replaces under a running service.
fn is_build_output(p: &Path) -> bool {
    let parts: Vec<_> = p.components().map(|c| c.as_os_str()).collect();
    parts.windows(2).any(|w| {
        w[0] == "target"
            || ((w[1] == "debug" || w[1] == "release") && w[0].to_string_lossy().contains("target"))
    })
}

/// The binary the service runs, and a warning when it is a poor choice. Run from an installed
/// copy, that copy. Run from a build directory, the `airlock` on PATH (e.g. `~/.cargo/bin`, from
/// `cargo install`) if it is this same version; otherwise this binary, with a warning saying
/// how to install it.
fn service_exe() -> (PathBuf, Option<String>) {
    let me = std::env::current_exe()
        .and_then(|p| p.canonicalize())
        .unwrap_or_else(|_| PathBuf::from("airlock"));
    if !is_build_output(&me) {
        return (me, None);
    }
    let ours = format!("airlock {}", env!("CARGO_PKG_VERSION"));
    let installed = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("airlock"))
        .filter_map(|p| p.canonicalize().ok())
        .filter(|p| p.is_file() && !is_build_output(p))
        .find(|p| {
            Command::new(p)
                .arg("--version")
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).starts_with(&ours))
        });
    match installed {
        Some(p) => (p, None),
        None => {
            let warning = format!(
                "warning: {} is a build output: `cargo clean` or the next build would remove or \
                 replace it under the service. Install airlock first (`cargo install --locked \
                 --path .`, which puts it in ~/.cargo/bin), then run `airlock install-service` \
                 again from the installed copy.",
                me.display()
            );
            (me, Some(warning))
        }
    }
}

/// Environment the service should keep from the installing shell (only what is set). The store
/// settings may carry a database password: unit files are written readable by their owner only,
/// and `--print` shows passwords as `***`.
fn service_env() -> Vec<(String, String)> {
    [
        "AIRLOCK_HOME",
        "AIRLOCK_LISTEN",
        "AIRLOCK_STORE",
        "AIRLOCK_PG_POOL_SIZE",
        "PGPASSWORD",
        "PGSSLMODE",
        "PGSSLROOTCERT",
    ]
    .iter()
    .filter_map(|k| {
        std::env::var(k)
            .ok()
            .filter(|v| !v.is_empty())
            .map(|v| (k.to_string(), v))
    })
    .collect()
}

fn unit_path() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".config"));
    base.join("systemd/user").join(UNIT_NAME)
}

/// Quotes a word for a systemd `ExecStart=` line.
fn systemd_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:@=,".contains(c))
    {
        s.to_string()
    } else {
        format!(
            "\"{}\"",
            s.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('%', "%%")
        )
    }
}

/// The systemd user unit running `airlock serve`, restarted on failure.
pub fn systemd_unit(exe: &Path, env: &[(String, String)]) -> String {
    // The address it listens on: the AIRLOCK_LISTEN written below, else the default.
    let listen = env
        .iter()
        .find(|(k, _)| k == "AIRLOCK_LISTEN")
        .map_or(config::DEFAULT_LISTEN, |(_, v)| v.as_str());
    let mut s = format!(
        "[Unit]\n\
         Description=airlock: coordination daemon for AI coding agents (MCP on {})\n\
         Documentation=https://github.com/adamorad/airlock\n\
         \n\
         [Service]\n\
         Type=simple\n",
        listen.replace('%', "%%")
    );
    s.push_str(&format!(
        "ExecStart={} serve\n",
        systemd_quote(&exe.display().to_string())
    ));
    for (k, v) in env {
        s.push_str(&format!(
            "Environment={}\n",
            systemd_quote(&format!("{k}={v}"))
        ));
    }
    s.push_str(
        "Restart=on-failure\n\
         RestartSec=2\n\
         # SIGTERM drains parked calls and commits the last batch before exiting.\n\
         KillSignal=SIGTERM\n\
         TimeoutStopSec=30\n\
         \n\
         [Install]\n\
         WantedBy=default.target\n",
    );
    s
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn plist_path(label: &str) -> PathBuf {
    home()
        .join("Library/LaunchAgents")
        .join(format!("{label}.plist"))
}

/// The LaunchAgent running `airlock serve` at login, kept alive if it fails.
pub fn launch_agent(exe: &Path, env: &[(String, String)], log: &Path) -> String {
    let mut envs = String::new();
    if !env.is_empty() {
        envs.push_str("  <key>EnvironmentVariables</key>\n  <dict>\n");
        for (k, v) in env {
            envs.push_str(&format!(
                "    <key>{}</key><string>{}</string>\n",
                xml_escape(k),
                xml_escape(v)
            ));
        }
        envs.push_str("  </dict>\n");
    }
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
  <key>Label</key><string>{label}</string>
  <key>ProgramArguments</key>
  <array>
    <string>{exe}</string>
    <string>serve</string>
  </array>
{envs}  <key>RunAtLoad</key><true/>
  <key>KeepAlive</key>
  <dict><key>SuccessfulExit</key><false/></dict>
  <key>StandardOutPath</key><string>{log}</string>
  <key>StandardErrorPath</key><string>{log}</string>
</dict>
</plist>
"#,
        label = LAUNCH_LABEL,
        exe = xml_escape(&exe.display().to_string()),
        log = xml_escape(&log.display().to_string()),
    )
}

/// One step of an install: a file to write or remove, or a command to run.
enum Step {
    Write(PathBuf, String),
    Remove(PathBuf),
    /// A command; `must` steps stop the install when they fail.
    Run {
        argv: Vec<String>,
        must: bool,
    },
}

fn run_step(argv: &[&str], must: bool) -> Step {
    Step::Run {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        must,
    }
}

fn describe(step: &Step) -> String {
    match step {
        Step::Write(p, _) => format!("write {}", p.display()),
        Step::Remove(p) => format!("remove {}", p.display()),
        Step::Run { argv, .. } => format!("run   {}", argv.join(" ")),
    }
}

/// Whether a systemd user instance answers (not in most containers, nor WSL without systemd).
fn systemd_user_available() -> bool {
    Command::new("systemctl")
        .args(["--user", "show-environment"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn manual_alternative() -> String {
    let exe = exe();
    let log = config::home_dir().join("daemon.log");
    format!(
        "Run the daemon yourself instead, e.g. from your shell profile:\n\
         \n    nohup {} serve >>{} 2>&1 &\n\
         \nor let MCP clients start it on demand through the stdio bridge (`\"command\": \"airlock\"`).",
        exe.display(),
        log.display()
    )
}

fn uid() -> u32 {
    // SAFETY: getuid has no failure modes and touches no memory.
    unsafe { libc::getuid() }
}

fn install_steps() -> Vec<Step> {
    let env = service_env();
    match platform() {
        Platform::Systemd => {
            let unit = systemd_unit(&exe(), &env);
            let changed = std::fs::read_to_string(unit_path()).ok().as_deref() != Some(&unit);
            // Unchanged: `start` is a no-op for a running daemon, so parked callers keep
            // waiting. Changed: `restart` so the new unit takes effect.
            let start = if changed { "restart" } else { "start" };
            vec![
                Step::Write(unit_path(), unit),
                run_step(&["systemctl", "--user", "daemon-reload"], true),
                run_step(&["systemctl", "--user", "enable", UNIT_NAME], true),
                run_step(&["systemctl", "--user", start, UNIT_NAME], true),
            ]
        }
        Platform::Launchd => {
            let domain = format!("gui/{}", uid());
            let mut steps = Vec::new();
            for old in V1_LAUNCH_LABELS {
                let p = plist_path(old);
                if p.exists() {
                    steps.push(run_step(
                        &["launchctl", "bootout", &domain, &p.display().to_string()],
                        false,
                    ));
                    steps.push(Step::Remove(p));
                }
            }
            let p = plist_path(LAUNCH_LABEL);
            let log = config::home_dir().join("daemon.log");
            steps.push(run_step(
                &["launchctl", "bootout", &domain, &p.display().to_string()],
                false,
            ));
            steps.push(Step::Write(p.clone(), launch_agent(&exe(), &env, &log)));
            steps.push(run_step(
                &["launchctl", "bootstrap", &domain, &p.display().to_string()],
                true,
            ));
            steps
        }
    }
}

fn uninstall_steps() -> Vec<Step> {
    match platform() {
        Platform::Systemd => vec![
            run_step(
                &["systemctl", "--user", "disable", "--now", UNIT_NAME],
                false,
            ),
            Step::Remove(unit_path()),
            run_step(&["systemctl", "--user", "daemon-reload"], false),
        ],
        Platform::Launchd => {
            let p = plist_path(LAUNCH_LABEL);
            let domain = format!("gui/{}", uid());
            vec![
                run_step(
                    &["launchctl", "bootout", &domain, &p.display().to_string()],
                    false,
                ),
                Step::Remove(p),
            ]
        }
    }
}

fn execute(steps: &[Step]) -> Result<(), String> {
    for step in steps {
        match step {
            Step::Write(p, content) => {
                if std::fs::read_to_string(p).ok().as_deref() == Some(content.as_str()) {
                    println!("unchanged {}", p.display());
                    continue;
                }
                if let Some(dir) = p.parent() {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                }
                write_private(p, content)
                    .map_err(|e| format!("cannot write {}: {e}", p.display()))?;
                println!("wrote {}", p.display());
            }
            Step::Remove(p) => match std::fs::remove_file(p) {
                Ok(()) => println!("removed {}", p.display()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("cannot remove {}: {e}", p.display())),
            },
            Step::Run { argv, must } => {
                let out = Command::new(&argv[0]).args(&argv[1..]).output();
                let ok = out.as_ref().is_ok_and(|o| o.status.success());
                if ok {
                    println!("ran {}", argv.join(" "));
                } else if *must {
                    let why = match out {
                        Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                        Err(e) => e.to_string(),
                    };
                    return Err(format!("`{}` failed: {why}", argv.join(" ")));
                }
            }
        }
    }
    Ok(())
}

/// Writes `content` readable by its owner only (it may hold a database password).
fn write_private(p: &Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(p)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(content.as_bytes())
}

fn print_plan(steps: &[Step]) {
    for step in steps {
        println!("{}", describe(step));
    }
    for step in steps {
        if let Step::Write(p, content) = step {
            println!("\n--- {} ---\n{}", p.display(), hide_passwords(content));
        }
    }
}

/// `content` with database passwords (in `AIRLOCK_STORE` URLs and `PGPASSWORD`) as `***`.
fn hide_passwords(content: &str) -> String {
    let mut out = String::with_capacity(content.len());
    for line in content.split_inclusive('\n') {
        if let Some(at) = line.find("PGPASSWORD=") {
            let end = line[at..]
                .find(['"', '<', '\n'])
                .map_or(line.len(), |e| at + e);
            out.push_str(&line[..at]);
            out.push_str("PGPASSWORD=***");
            out.push_str(&line[end..]);
        } else if let Some(at) = line.find("postgres") {
            let end = line[at..]
                .find(['"', '<', '\n', ' '])
                .map_or(line.len(), |e| at + e);
            out.push_str(&line[..at]);
            out.push_str(&config::redact_url(&line[at..end]));
            out.push_str(&line[end..]);
        } else {
            out.push_str(line);
        }
    }
    out
}

pub fn install(print: bool) -> i32 {
    if let Some(warning) = service_exe().1 {
        eprintln!("airlock: {warning}");
    }
    let steps = install_steps();
    if print {
        print_plan(&steps);
        return exit::OK;
    }
    if platform() == Platform::Systemd && !systemd_user_available() {
        eprintln!(
            "airlock: there is no systemd user instance here (a container, or WSL without \
             systemd), so no service was installed.\n{}",
            manual_alternative()
        );
        return exit::UNAVAILABLE;
    }
    match execute(&steps) {
        Ok(()) => {
            println!(
                "airlock is installed as a service and running; check it with `airlock status`"
            );
            exit::OK
        }
        Err(e) => {
            eprintln!("airlock: {e}\n{}", manual_alternative());
            exit::UNAVAILABLE
        }
    }
}

pub fn uninstall(print: bool) -> i32 {
    let steps = uninstall_steps();
    if print {
        print_plan(&steps);
        return exit::OK;
    }
    if platform() == Platform::Systemd && !systemd_user_available() {
        // Nothing can be running under systemd; still remove a unit file left behind.
        let p = unit_path();
        if p.exists() {
            if let Err(e) = execute(&[Step::Remove(p)]) {
                eprintln!("airlock: {e}");
                return exit::UNAVAILABLE;
            }
        }
        println!("no systemd user instance here; nothing is running under it");
        return exit::OK;
    }
    match execute(&steps) {
        Ok(()) => {
            println!(
                "the airlock service is uninstalled (state in {} is kept)",
                config::home_dir().display()
            );
            exit::OK
        }
        Err(e) => {
            eprintln!("airlock: {e}");
            exit::UNAVAILABLE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_runs_serve_and_restarts() {
        let u = systemd_unit(
            Path::new("/opt/my bin/airlock"),
            &[("AIRLOCK_HOME".into(), "/srv/a".into())],
        );
        assert!(
            u.contains("ExecStart=\"/opt/my bin/airlock\" serve\n"),
            "{u}"
        );
        assert!(u.contains("Environment=AIRLOCK_HOME=/srv/a\n"), "{u}");
        let secret = systemd_unit(
            Path::new("/usr/bin/airlock"),
            &[
                (
                    "AIRLOCK_STORE".into(),
                    "postgres://u:hunter2@db/coord".into(),
                ),
                ("PGPASSWORD".into(), "hunter3".into()),
            ],
        );
        assert!(secret.contains("hunter2") && secret.contains("hunter3"));
        let shown = hide_passwords(&secret);
        assert!(
            !shown.contains("hunter2") && !shown.contains("hunter3"),
            "{shown}"
        );
        assert!(
            shown.contains("AIRLOCK_STORE=postgres://u:***@db/coord"),
            "{shown}"
        );
        assert!(u.contains("Restart=on-failure\n"));
        assert!(u.contains("(MCP on 127.0.0.1:27183)"), "{u}");
        let elsewhere = systemd_unit(
            Path::new("/usr/bin/airlock"),
            &[("AIRLOCK_LISTEN".into(), "127.0.0.1:27999".into())],
        );
        assert!(
            elsewhere.contains("(MCP on 127.0.0.1:27999)\n"),
            "{elsewhere}"
        );
        assert!(!elsewhere.contains("27183"), "{elsewhere}");
        assert!(u.contains("WantedBy=default.target\n"));
    }

    #[test]
    fn build_outputs_are_recognised() {
        assert!(is_build_output(Path::new(
            "/src/airlock/target/debug/airlock"
        )));
        assert!(is_build_output(Path::new(
            "/w/ready/target/release/airlock"
        )));
        assert!(is_build_output(Path::new("/tmp/my-target/debug/airlock")));
        assert!(!is_build_output(Path::new("/home/u/.cargo/bin/airlock")));
        assert!(!is_build_output(Path::new("/usr/bin/airlock")));
    }

    #[test]
    fn plist_names_the_binary_and_log() {
        let p = launch_agent(
            Path::new("/usr/local/bin/airlock"),
            &[],
            Path::new("/h/.airlock/daemon.log"),
        );
        assert!(p.contains("<string>/usr/local/bin/airlock</string>\n    <string>serve</string>"));
        assert!(p.contains("<key>Label</key><string>com.adamorad.airlock</string>"));
        assert!(p.contains("<key>StandardErrorPath</key><string>/h/.airlock/daemon.log</string>"));
    }
}
