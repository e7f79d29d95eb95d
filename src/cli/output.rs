//! Output in three shapes: an aligned table for people, JSON lines and CSV for scripts.

use std::io::{IsTerminal, Write};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Csv,
}

/// `--format`, defaulting to a table on a terminal and JSON lines otherwise.
pub fn resolve(format: Option<Format>) -> Format {
    format.unwrap_or(if std::io::stdout().is_terminal() { Format::Table } else { Format::Json })
}

/// A row that can be shown as a table or CSV (JSON comes from `Serialize`).
pub trait Tabular: serde::Serialize {
    const HEADERS: &'static [&'static str];
    fn cells(&self) -> Vec<String>;
}

pub fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map(ToString::to_string).unwrap_or_default()
}

pub fn time(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub fn print<T: Tabular>(rows: &[T], format: Format) -> std::io::Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match format {
        Format::Json => {
            for r in rows {
                serde_json::to_writer(&mut out, r)?;
                out.write_all(b"\n")?;
            }
        }
        Format::Csv => {
            let mut w = csv::Writer::from_writer(out);
            w.write_record(T::HEADERS)?;
            for r in rows {
                w.write_record(r.cells())?;
            }
            w.flush()?;
        }
        Format::Table => table(&mut out, T::HEADERS, rows.iter().map(Tabular::cells).collect())?,
    }
    Ok(())
}

/// Aligned columns; long cells are cut so a row stays one line.
pub fn table(out: &mut impl Write, headers: &[&str], rows: Vec<Vec<String>>) -> std::io::Result<()> {
    const MAX: usize = 60;
    let cut = |s: &str| -> String {
        // Cells hold data written about abusive users: escaped, they cannot drive the terminal.
        let s = crate::text::single_line(s);
        if s.chars().count() > MAX {
            format!("{}…", s.chars().take(MAX - 1).collect::<String>())
        } else {
            s.into_owned()
        }
    };
    let rows: Vec<Vec<String>> = rows.into_iter().map(|r| r.iter().map(|c| cut(c)).collect()).collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect::<Vec<_>>().join("  ").trim_end().to_owned()
    };
    writeln!(out, "{}", line(headers.to_vec()))?;
    writeln!(out, "{}", widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("  "))?;
    for r in &rows {
        writeln!(out, "{}", line(r.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_shows_control_and_bidi_characters_from_data_as_escapes() {
        let mut out = Vec::new();
        let hostile = vec![vec!["\u{1b}[2Jwiped".to_owned(), "a\rb".to_owned(), "evil\u{202e}gnp.exe".to_owned()]];
        table(&mut out, &["user_id", "reason", "room"], hostile).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(!text.chars().any(|c| c == '\u{1b}' || c == '\r' || c == '\u{202e}'), "{text:?}");
        assert!(
            text.contains("\\u{1b}[2Jwiped") && text.contains("a\\rb") && text.contains("evil\\u{202e}gnp.exe"),
            "{text}"
        );
    }
}
