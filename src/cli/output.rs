//! How results are printed: `--format table|json`, incus-style boxed tables,
//! aligned `key : value` listings and dates, all written to a `dyn Write`
//! so the same code prints to the terminal or into the daemon's reply.
//!
//! JSON is the engine's own structs through serde (exact bytes, stable field
//! names); tables are for people (human sizes).

use std::io::Write;

use anyhow::Result;

/// `--format`, shared by every command that prints a listing or status.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct FormatArg {
    /// Output format: a table for people, or JSON (exact byte counts, stable
    /// field names) for scripts.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

/// Write `value` as pretty JSON followed by a newline.
pub fn json(out: &mut dyn Write, value: &impl serde::Serialize) -> Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)?;
    Ok(())
}

/// A table in the style of `incus storage volume list`:
///
/// ```text
/// +------+------+
/// | NAME | SIZE |
/// +------+------+
/// | vm1  | 20 GiB |
/// +------+------+
/// ```
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<S: Into<String>>(header: impl IntoIterator<Item = S>) -> Table {
        Table { header: header.into_iter().map(Into::into).collect(), rows: Vec::new() }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn write(&self, out: &mut dyn Write) -> Result<()> {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let rule: String = widths.iter().map(|w| format!("+{}", "-".repeat(w + 2))).collect::<String>() + "+";
        let line = |cells: &[String]| -> String {
            let mut s = String::new();
            for (i, w) in widths.iter().enumerate() {
                let cell = cells.get(i).map(String::as_str).unwrap_or("");
                let pad = w - cell.chars().count();
                s.push_str(&format!("| {cell}{} ", " ".repeat(pad)));
            }
            s + "|"
        };
        writeln!(out, "{rule}")?;
        writeln!(out, "{}", line(&self.header))?;
        writeln!(out, "{rule}")?;
        for row in &self.rows {
            writeln!(out, "{}", line(row))?;
        }
        writeln!(out, "{rule}")?;
        Ok(())
    }
}

/// Aligned `key : value` lines, like `vdostats --verbose`.
pub struct Listing {
    items: Vec<(String, String)>,
}

impl Listing {
    pub fn new() -> Listing {
        Listing { items: Vec::new() }
    }

    pub fn item(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.items.push((key.into(), value.into()));
    }

    pub fn write(&self, out: &mut dyn Write, indent: usize) -> Result<()> {
        let width = self.items.iter().map(|(k, _)| k.chars().count()).max().unwrap_or(0);
        for (k, v) in &self.items {
            writeln!(out, "{:indent$}{k:<width$} : {v}", "")?;
        }
        Ok(())
    }
}

/// A Unix time as `YYYY-MM-DD HH:MM:SS UTC` (no time-zone database needed).
pub fn utc(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days: exact for the proleptic Gregorian calendar.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", secs / 3600, secs / 60 % 60, secs % 60)
}

/// An optional statistic, or `n/a` when the engine does not know it.
pub fn or_na<T>(value: Option<T>, show: impl FnOnce(T) -> String) -> String {
    value.map(show).unwrap_or_else(|| "n/a".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_pad_every_column_to_its_widest_cell() {
        let mut t = Table::new(["NAME", "SIZE"]);
        t.row(vec!["vm1".into(), "20 GiB".into()]);
        let mut out = Vec::new();
        t.write(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "+------+--------+\n| NAME | SIZE   |\n+------+--------+\n| vm1  | 20 GiB |\n+------+--------+\n"
        );
    }

    #[test]
    fn unix_times_print_as_utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13:20 UTC");
    }
}
