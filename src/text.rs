//! Text from data — user ids, room ids, reasons, object keys, all written by a moderation
//! pipeline about an abusive user — made safe to show to a person: in a terminal table, a story,
//! or a line of a text log. Control characters (C0, DEL, C1) and the invisible characters that
//! reorder or hide text (bidirectional embeddings, overrides and isolates, line and paragraph
//! separators) are written as visible escapes, so data can neither recolour nor rewrite an
//! operator's terminal nor forge a log line. Everything else, any script included, is kept.

use std::borrow::Cow;
use std::fmt::Write;

/// Characters that reorder or hide the text around them, though not control characters.
fn invisible_layout(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{2028}' | '\u{2029}')
}

fn needs_escape(c: char) -> bool {
    c.is_control() || invisible_layout(c)
}

/// `s` on one line with every control and bidi character escaped (`\n`, `\u{1b}`, `\u{202e}`).
pub fn single_line(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// `s` for a page: like [`single_line`], but line breaks and tabs stay (pages show multi-line
/// payloads in `<pre>`); every other control and bidi character is a visible escape.
pub fn for_page(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| needs_escape(c) && c != '\n' && c != '\t') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' | '\t' => out.push(c),
            '\r' => out.push_str("\\r"),
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_moves_a_cursor_or_reorders_text_and_keeps_the_rest() {
        assert_eq!(single_line("\u{1b}[31mred\u{1b}[0m"), "\\u{1b}[31mred\\u{1b}[0m");
        assert_eq!(single_line("a\rb\nc\td"), "a\\rb\\nc\\td");
        assert_eq!(single_line("user\u{202e}gnp.exe"), "user\\u{202e}gnp.exe");
        assert_eq!(single_line("\u{9b}2J"), "\\u{9b}2J");
        assert_eq!(single_line("\u{7f}\u{0}"), "\\u{7f}\\u{0}");
        assert_eq!(single_line("违规 user-1 émoji 🙂"), "违规 user-1 émoji 🙂");
        assert!(matches!(single_line("plain"), Cow::Borrowed(_)));
    }

    #[test]
    fn a_page_keeps_line_breaks_and_shows_the_rest() {
        assert_eq!(for_page("a\nb\tc\rd"), "a\nb\tc\\rd");
        assert_eq!(for_page("xss-8-\u{202e}evil\u{202c}-rtl"), "xss-8-\\u{202e}evil\\u{202c}-rtl");
        assert!(matches!(for_page("plain\n"), Cow::Borrowed(_)));
    }
}
