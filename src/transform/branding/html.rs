//! Where the header and footer blocks go in an HTML document.
//!
//! A small tag scanner, not an HTML parser: it skips comments (Outlook's conditional comments
//! hide whole `<body>` tags in them) and the raw text of `script`/`style`/`title`/`textarea`,
//! and reads tag ends with quoted attribute values in mind. It works on bytes, so it is right
//! for every ASCII-compatible charset.

use memchr::memchr;

use super::mime::find;

/// Byte offsets in `html` for the header block and the footer block.
///
/// Header: right after `<body…>`; without a body tag after `</head>`, `<html…>` or the doctype;
/// else at the start. Footer: right before the last `</body>`; else before the last `</html>`;
/// else at the end.
pub fn insertion_points(html: &[u8]) -> (usize, usize) {
    let n = html.len();
    let mut body_open = None;
    let mut body_close = None;
    let mut head_close = None;
    let mut html_open = None;
    let mut html_close = None;
    let mut doctype = None;
    let mut i = 0;
    while let Some(off) = memchr(b'<', &html[i..]) {
        let p = i + off;
        let rest = &html[p..];
        if rest.starts_with(b"<!--") {
            i = find(html, p + 4, n, b"-->").map_or(n, |e| e + 3);
            continue;
        }
        if rest.starts_with(b"<!") || rest.starts_with(b"<?") {
            let end = tag_end(html, p + 2);
            if doctype.is_none() && starts_with_ci(&rest[2..], b"doctype") {
                doctype = Some(end);
            }
            i = end;
            continue;
        }
        let closing = rest.get(1) == Some(&b'/');
        let name_start = p + if closing { 2 } else { 1 };
        let name_len = html[name_start..]
            .iter()
            .take(16)
            .take_while(|b| b.is_ascii_alphanumeric())
            .count();
        if name_len == 0 {
            i = p + 1;
            continue;
        }
        let name = html[name_start..name_start + name_len].to_ascii_lowercase();
        let end = tag_end(html, name_start + name_len);
        match (closing, name.as_slice()) {
            (false, b"body") if body_open.is_none() => body_open = Some(end),
            (true, b"body") => body_close = Some(p),
            (true, b"head") if head_close.is_none() => head_close = Some(end),
            (false, b"html") if html_open.is_none() => html_open = Some(end),
            (true, b"html") => html_close = Some(p),
            (false, b"script" | b"style" | b"title" | b"textarea") => {
                let mut closer = b"</".to_vec();
                closer.extend_from_slice(&name);
                i = find_ci(html, end, &closer).unwrap_or(n);
                continue;
            }
            _ => {}
        }
        i = end;
    }
    let header = body_open
        .or(head_close)
        .or(html_open)
        .or(doctype)
        .unwrap_or(0);
    let footer = body_close
        .or(html_close)
        .filter(|&f| f >= header)
        .unwrap_or(n);
    (header, footer)
}

/// The position just after the `>` that ends the tag whose name ends at `from`.
fn tag_end(html: &[u8], from: usize) -> usize {
    let mut quote: Option<u8> = None;
    for (k, &b) in html[from.min(html.len())..].iter().enumerate() {
        match (quote, b) {
            (Some(q), _) if b == q => quote = None,
            (Some(_), _) => {}
            (None, b'"' | b'\'') => quote = Some(b),
            (None, b'>') => return from + k + 1,
            _ => {}
        }
    }
    html.len()
}

fn starts_with_ci(hay: &[u8], needle: &[u8]) -> bool {
    hay.len() >= needle.len() && hay[..needle.len()].eq_ignore_ascii_case(needle)
}

/// Case-insensitive search for an ASCII `needle` starting with `<`.
fn find_ci(hay: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    let mut i = from;
    while let Some(off) = memchr(b'<', hay.get(i..)?) {
        let p = i + off;
        if starts_with_ci(&hay[p..], needle) {
            return Some(p);
        }
        i = p + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn points(s: &str) -> (String, String) {
        let (h, f) = insertion_points(s.as_bytes());
        (s[..h].to_string(), s[f..].to_string())
    }

    #[test]
    fn after_body_tag_and_before_its_end() {
        let doc = "<html><head><style>p{}</style></head><BODY class=\"a>b\" style='x'><p>hi</p></body></html>";
        let (before, after) = points(doc);
        assert!(
            before.ends_with("<BODY class=\"a>b\" style='x'>"),
            "{before}"
        );
        assert_eq!(after, "</body></html>");
    }

    #[test]
    fn ignores_tags_in_comments_scripts_and_lookalikes() {
        let doc = "<!--[if mso]><body x><![endif]--><script>var s='</body>';</script><bodyx><body><p>a</p><!-- </body> --></body>";
        let (before, after) = points(doc);
        assert!(before.ends_with("<bodyx><body>"), "{before}");
        assert_eq!(after, "</body>");
    }

    #[test]
    fn falls_back_without_body() {
        assert_eq!(
            points("<!DOCTYPE html><html><head></head><p>x</p></html>"),
            (
                "<!DOCTYPE html><html><head></head>".into(),
                "</html>".into()
            )
        );
        assert_eq!(points("<p>fragment</p>"), (String::new(), String::new()));
        assert_eq!(
            points("<!doctype html><p>x</p>"),
            ("<!doctype html>".into(), String::new())
        );
        // An unterminated comment or tag never panics.
        assert_eq!(
            points("<p>a<!-- never closed"),
            (String::new(), String::new())
        );
        assert_eq!(points("<body"), ("<body".into(), String::new()));
    }
}
