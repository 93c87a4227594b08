//! Output for people: styles, progress bars, numbers and tables.

use std::io::IsTerminal as _;
use std::time::Duration;

use console::style;
use indicatif::{ProgressBar, ProgressStyle};

/// Writes to standard output. A closed pipe means the reader has all it wants, as for
/// `cat`: the process ends at once with success, and nothing more is printed. Any
/// other failure to write ends it with exit code 2 and says why on stderr.
pub fn write_out(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = stdout.write_fmt(args) {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!(
            "{} writing to standard output: {error}",
            style("error:").red().bold()
        );
        std::process::exit(2);
    }
}

/// Prints an error on one line, with its causes, to stderr.
pub fn print_error(error: &anyhow::Error) {
    eprintln!("{} {error:#}", style("error:").red().bold());
}

/// Prints a warning to stderr.
pub fn warn(message: &str) {
    eprintln!("{} {message}", style("warning:").yellow().bold());
}

/// Prints a value as pretty JSON on stdout.
pub fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A progress bar on stderr when it is a terminal; nothing otherwise.
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A bar labelled `label`, shown only on a terminal.
    pub fn new(label: impl Into<std::borrow::Cow<'static, str>>) -> Self {
        if !std::io::stderr().is_terminal() {
            return Self { bar: None };
        }
        let bar = ProgressBar::new(0);
        let template = "{prefix:>10.cyan.bold} [{bar:32.cyan/blue}] {human_pos}/{human_len} {per_sec} eta {eta}";
        if let Ok(bar_style) = ProgressStyle::with_template(template) {
            bar.set_style(bar_style.progress_chars("=> "));
        }
        bar.set_prefix(label);
        bar.enable_steady_tick(Duration::from_millis(120));
        Self { bar: Some(bar) }
    }

    /// Moves the bar to `done` of `total`.
    pub fn update(&self, done: u64, total: u64) {
        if let Some(bar) = &self.bar {
            bar.set_length(total.max(done));
            bar.set_position(done);
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// A whole number with thousands separators: 12,345.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// A duration for people: 850µs, 12.3ms, 4.56s.
pub fn duration(elapsed: Duration) -> String {
    let micros = elapsed.as_secs_f64() * 1e6;
    if micros < 1_000.0 {
        format!("{micros:.0}µs")
    } else if micros < 1_000_000.0 {
        format!("{:.1}ms", micros / 1_000.0)
    } else {
        format!("{:.2}s", micros / 1_000_000.0)
    }
}

/// "1 event", "2 events".
pub fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{} {}", count(n), if n == 1 { one } else { many })
}

/// A table with a header row, a rule under it, and no other lines.
pub fn table(header: &[&str]) -> comfy_table::Table {
    use comfy_table::{LineStyle, TableStyle};
    let mut table = comfy_table::Table::new();
    table.load_style(TableStyle::new().header_separator(LineStyle::none().fill('─').junction('─')));
    table.set_header(header.to_vec());
    table
}

/// A short form of a UUID for tables: its last twelve hex digits, which differ
/// between ids made in the same millisecond.
pub fn short_id(id: &impl std::fmt::Display) -> String {
    let text = id.to_string();
    format!("…{}", &text[text.len().saturating_sub(12)..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_easily() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1_000), "1,000");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(duration(Duration::from_micros(850)), "850µs");
        assert_eq!(duration(Duration::from_micros(12_345)), "12.3ms");
        assert_eq!(duration(Duration::from_millis(4_561)), "4.56s");
        assert_eq!(plural(1, "event", "events"), "1 event");
        assert_eq!(plural(2, "event", "events"), "2 events");
    }
}
