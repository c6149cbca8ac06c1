//! `airlock completions SHELL` and `airlock man`: generated from the clap definitions by clap's
//! own crates, so they always match the binary that prints them.

use clap::CommandFactory;

use super::{exit, Cli};

/// Prints the completion script for `shell` on stdout.
pub fn completions(shell: clap_complete::Shell) -> i32 {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "airlock", &mut out);
    write_out(&out, "the completion script")
}

/// Prints the man page (roff) on stdout: `airlock(1)`, its options and a line per command
/// (each command's own options: `airlock COMMAND --help`).
pub fn man() -> i32 {
    let mut out = Vec::new();
    if let Err(e) = clap_mangen::Man::new(Cli::command()).render(&mut out) {
        eprintln!("airlock: cannot render the man page: {e}");
        return exit::UNAVAILABLE;
    }
    write_out(&out, "the man page")
}

/// Writes to stdout; a reader that went away (`| head`) is not an error worth a message.
fn write_out(out: &[u8], what: &str) -> i32 {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(out).and_then(|()| stdout.flush()) {
        Ok(()) => exit::OK,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => exit::OK,
        Err(e) => {
            eprintln!("airlock: cannot write {what}: {e}");
            exit::UNAVAILABLE
        }
    }
}
