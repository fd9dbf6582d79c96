//! Text that goes where a sender does not control it: cut to a bound, or escaped for HTML. One
//! of each for the whole project, so a label, an attribute and a page agree on what they do.

/// `s` cut to at most `max` bytes at a character boundary, and whether it was cut.
pub fn cut(s: &str, max: usize) -> (String, bool) {
    if s.len() <= max {
        return (s.to_string(), false);
    }
    let mut end = max;
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    (s[..end].to_string(), true)
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_on_a_character_boundary() {
        let long = "é".repeat(300);
        let (c, was_cut) = cut(&long, 255);
        assert!(was_cut && c.len() <= 255 && long.starts_with(&c));
        assert_eq!(cut("short", 10), ("short".to_string(), false));
        assert_eq!(cut("é", 1), (String::new(), true));
    }

    #[test]
    fn escapes_what_html_needs() {
        assert_eq!(
            escape_html(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
