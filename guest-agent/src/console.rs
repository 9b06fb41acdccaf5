//! Output on the console (the agent's stdout and stderr, which the kernel opens on
//! `/dev/console`). Unlike `println!`, nothing here panics when a write fails: a lost line
//! is better than a kernel panic.

use std::fmt;
use std::io::Write;

/// Prints one line on stdout.
pub fn say(line: fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    // Ignored on purpose: there is nowhere left to report a console failure.
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

/// Prints `husk-agent: error: <error>` on stderr.
pub fn error(error: &dyn fmt::Display) {
    let mut err = std::io::stderr().lock();
    // Ignored on purpose, as in `say`.
    let _ = writeln!(err, "husk-agent: error: {error}");
}
