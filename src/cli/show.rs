//! Printing values that other agents wrote: they may hold newlines that forge another record's
//! line, or terminal escape sequences (colours, cursor moves, OSC 52 clipboard writes).
//!
//! [`escape`] makes a value one visible line: control characters (C0, DEL, C1) and invisible
//! format characters (zero-width, bidirectional controls, BOM) become `\n`, `\t`, `\r`, `\e` or
//! `\u{…}`. Lists and multi-field records are always escaped, so every record is one line;
//! a single value (`airlock note get`) is escaped only when printed to a terminal, so
//! `airlock note get k > file` still writes it byte for byte.

use std::io::IsTerminal;

/// Whether `c` is printed escaped: a control character, or one that is invisible or reorders
/// text (these are refused in names, but values may hold them).
pub fn needs_escape(c: char) -> bool {
    c.is_control() || crate::core::is_invisible_format(c)
}

/// `s` as one line with every control or invisible character spelled out.
pub fn escape(s: &str) -> String {
    if !s.chars().any(needs_escape) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{1b}' => out.push_str("\\e"),
            c if needs_escape(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// `s` escaped when standard output is a terminal, else as it is.
pub fn for_stdout(s: &str) -> String {
    if std::io::stdout().is_terminal() {
        escape(s)
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_values_become_one_visible_line() {
        assert_eq!(escape("plain value"), "plain value");
        assert_eq!(escape("a\nb\tc\r"), "a\\nb\\tc\\r");
        assert_eq!(
            escape("\u{1b}]52;c;aGk=\u{7}"),
            "\\e]52;c;aGk=\\u{7}",
            "OSC 52 (clipboard write) is shown, not run"
        );
        assert_eq!(escape("\u{9b}31m"), "\\u{9b}31m", "C1 CSI");
        assert_eq!(escape("ad\u{200b}min"), "ad\\u{200b}min");
        assert_eq!(escape("x\u{202e}gpj.exe"), "x\\u{202e}gpj.exe");
        assert_eq!(escape("ünïcödé ✓"), "ünïcödé ✓");
        assert!(!escape("k1\tv\nk2\tforged").contains('\n'));
    }
}
