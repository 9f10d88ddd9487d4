//! The MIME structure of a message as byte ranges: where each entity's header block, body and
//! (for multiparts) children are, so branding can splice into the original bytes and leave
//! everything else untouched.
//!
//! Why not `MessageParser::parse`: a sender controls the nesting, and mail-parser keeps nested
//! `message/rfc822` parts as nested values whose drop is recursive — 10,000 levels (even hidden
//! inside a base64 attachment) overflow a 2 MiB stack and abort the whole server. So this walk
//! is iterative (an explicit stack), never looks inside `message/*` parts (they are opaque
//! attachments to branding), and stops at [`MAX_DEPTH`] / [`MAX_PARTS`]. mail-parser still does
//! the parsing that is easy to get wrong — header values (Content-Type parameters, RFC 2231,
//! comments) and later the transfer decodings — but only on one header block at a time.
//!
//! Boundaries follow RFC 2046: a delimiter is a line that is `--boundary`, optionally followed
//! by `--` (the close delimiter) and white space; the CRLF before it belongs to the delimiter.

use mail_parser::{HeaderName, HeaderValue, MessageParser};
use memchr::memmem;

/// Deepest multipart nesting branding accepts (the root is depth 0).
pub const MAX_DEPTH: usize = 32;
/// Most MIME entities (the root, every multipart and every leaf) branding accepts.
pub const MAX_PARTS: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StructureError {
    #[error("MIME parts nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("more than {MAX_PARTS} MIME parts")]
    TooManyParts,
}

/// Content-Transfer-Encoding, as far as branding cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cte {
    /// Absent or `7bit`.
    SevenBit,
    /// `8bit` or `binary`.
    EightBit,
    QuotedPrintable,
    Base64,
    /// Anything else (x-uuencode…): never decoded, never changed.
    Unknown,
}

/// One header field: its raw bytes (with continuation lines and the final CRLF).
#[derive(Debug, Clone)]
pub struct Field {
    pub start: usize,
    pub end: usize,
    /// Lowercased field name; empty for a line that is not a field at all.
    pub name: String,
}

#[derive(Debug, Clone)]
pub struct Multipart {
    pub boundary: String,
    pub children: Vec<usize>,
    /// Where a new last child can be inserted (the CRLF before the close delimiter), when the
    /// multipart is properly closed.
    pub close_at: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct Entity {
    /// First byte of the header block.
    pub start: usize,
    /// First byte of the body (after the empty line).
    pub body_start: usize,
    /// End of the body (exclusive); the delimiter's CRLF, if any, starts here.
    pub end: usize,
    /// False when the header block is not closed by an empty line (then there is no body).
    pub has_separator: bool,
    pub depth: usize,
    pub parent: Option<usize>,
    pub fields: Vec<Field>,
    /// Lowercased type and subtype (`text/plain` when absent, `message/rfc822` in a digest).
    pub ctype: String,
    pub subtype: String,
    /// Content-Type parameters (names lowercased).
    pub params: Vec<(String, String)>,
    pub cte: Cte,
    /// `Content-Disposition: attachment`, or a file name on the part: never a body to brand.
    pub attachment: bool,
    pub content_id: Option<String>,
    pub multipart: Option<Multipart>,
}

impl Entity {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn is(&self, ctype: &str, subtype: &str) -> bool {
        self.ctype == ctype && self.subtype == subtype
    }

    pub fn has_field(&self, name: &str) -> bool {
        self.fields.iter().any(|f| f.name == name)
    }
}

/// The entities of a message; index 0 is the root.
#[derive(Debug)]
pub struct Tree {
    pub entities: Vec<Entity>,
}

/// Finds `needle` in `hay[from..to]`, returning an absolute position.
pub fn find(hay: &[u8], from: usize, to: usize, needle: &[u8]) -> Option<usize> {
    hay.get(from..to)
        .and_then(|h| memmem::find(h, needle))
        .map(|p| p + from)
}

/// Walks the whole structure (iteratively), enforcing the caps.
pub fn walk(msg: &[u8]) -> Result<Tree, StructureError> {
    // Every line that starts with "--": the only places a delimiter can be.
    let mut dash_lines: Vec<usize> = Vec::new();
    if msg.starts_with(b"--") {
        dash_lines.push(0);
    }
    dash_lines.extend(memmem::find_iter(msg, b"\r\n--").map(|p| p + 2));

    let mut entities = vec![entity(msg, 0, msg.len(), 0, None, false)];
    let mut pending = vec![0usize];
    while let Some(i) = pending.pop() {
        let Some(boundary) = entities[i].multipart.as_ref().map(|m| m.boundary.clone()) else {
            continue;
        };
        let (ranges, close_at) = split(
            msg,
            &dash_lines,
            entities[i].body_start,
            entities[i].end,
            boundary.as_bytes(),
        );
        if ranges.is_empty() {
            // No delimiter at all: an opaque blob, left alone.
            entities[i].multipart = None;
            continue;
        }
        let depth = entities[i].depth + 1;
        if depth > MAX_DEPTH {
            return Err(StructureError::TooDeep);
        }
        let digest = entities[i].subtype == "digest";
        let mut children = Vec::with_capacity(ranges.len());
        for (start, end) in ranges {
            if entities.len() >= MAX_PARTS {
                return Err(StructureError::TooManyParts);
            }
            children.push(entities.len());
            pending.push(entities.len());
            entities.push(entity(msg, start, end, depth, Some(i), digest));
        }
        if let Some(mp) = entities[i].multipart.as_mut() {
            mp.children = children;
            mp.close_at = close_at;
        }
    }
    Ok(Tree { entities })
}

/// The child ranges of a multipart body `[from, to)`, and where a last child could be added.
fn split(
    msg: &[u8],
    dash_lines: &[usize],
    from: usize,
    to: usize,
    boundary: &[u8],
) -> (Vec<(usize, usize)>, Option<usize>) {
    let first = dash_lines.partition_point(|&p| p < from);
    // (line start, first byte after the line's CRLF)
    let mut delimiters: Vec<(usize, usize)> = Vec::new();
    let mut close: Option<usize> = None;
    for &p in &dash_lines[first..] {
        if p >= to {
            break;
        }
        let line_end = find(msg, p, to, b"\r\n").unwrap_or(to);
        let Some(rest) = msg[p + 2..line_end].strip_prefix(boundary) else {
            continue;
        };
        let blank = |s: &[u8]| s.iter().all(|&b| b == b' ' || b == b'\t');
        if let Some(after) = rest.strip_prefix(b"--")
            && blank(after)
        {
            close = Some(p);
            break;
        }
        if blank(rest) {
            delimiters.push((p, (line_end + 2).min(to)));
        }
    }
    let mut ranges = Vec::with_capacity(delimiters.len());
    for (k, &(_, start)) in delimiters.iter().enumerate() {
        let next = delimiters.get(k + 1).map(|d| d.0).or(close);
        let end = match next {
            Some(line) => line.saturating_sub(2).max(start),
            None => to,
        };
        ranges.push((start, end));
    }
    let close_at = match (close, ranges.last()) {
        (Some(line), Some(&(start, _))) if line >= start + 2 => Some(line - 2),
        _ => None,
    };
    (ranges, close_at)
}

/// Splits a header block into fields (a line starting with white space continues a field).
fn fields(msg: &[u8], start: usize, end: usize) -> Vec<Field> {
    let mut out: Vec<Field> = Vec::new();
    let mut pos = start;
    while pos < end {
        let line_end = find(msg, pos, end, b"\r\n").map_or(end, |p| p + 2);
        let line = &msg[pos..line_end];
        let continuation = matches!(line.first(), Some(b' ' | b'\t'));
        match out.last_mut() {
            Some(last) if continuation && !last.name.is_empty() => last.end = line_end,
            _ => {
                let name = match memchr::memchr(b':', line) {
                    Some(colon) => String::from_utf8_lossy(&line[..colon])
                        .trim()
                        .to_ascii_lowercase(),
                    None => String::new(),
                };
                out.push(Field {
                    start: pos,
                    end: line_end,
                    name,
                });
            }
        }
        pos = line_end;
    }
    out
}

/// Parses one entity spanning `[start, end)`.
fn entity(
    msg: &[u8],
    start: usize,
    end: usize,
    depth: usize,
    parent: Option<usize>,
    in_digest: bool,
) -> Entity {
    let (header_end, body_start, has_separator) = if msg[start..end].starts_with(b"\r\n") {
        (start, start + 2, true)
    } else {
        match find(msg, start, end, b"\r\n\r\n") {
            Some(p) => (p + 2, p + 4, true),
            None => (end, end, false),
        }
    };
    let mut e = Entity {
        start,
        body_start,
        end,
        has_separator,
        depth,
        parent,
        fields: fields(msg, start, header_end),
        ctype: if in_digest { "message" } else { "text" }.into(),
        subtype: if in_digest { "rfc822" } else { "plain" }.into(),
        params: Vec::new(),
        cte: Cte::SevenBit,
        attachment: false,
        content_id: None,
        multipart: None,
    };
    if header_end > start
        && let Some(parsed) = MessageParser::new().parse_headers(&msg[start..body_start])
    {
        for h in parsed.headers() {
            match (&h.name, &h.value) {
                (HeaderName::ContentType, HeaderValue::ContentType(ct)) => {
                    e.ctype = ct.ctype().to_ascii_lowercase();
                    e.subtype = ct.subtype().unwrap_or("").to_ascii_lowercase();
                    e.params = ct
                        .attributes()
                        .unwrap_or_default()
                        .iter()
                        .map(|a| (a.name.to_ascii_lowercase(), a.value.to_string()))
                        .collect();
                }
                (HeaderName::ContentTransferEncoding, HeaderValue::Text(t)) => {
                    e.cte = match t.trim().to_ascii_lowercase().as_str() {
                        "7bit" | "" => Cte::SevenBit,
                        "8bit" | "binary" => Cte::EightBit,
                        "quoted-printable" => Cte::QuotedPrintable,
                        "base64" => Cte::Base64,
                        _ => Cte::Unknown,
                    }
                }
                (HeaderName::ContentDisposition, HeaderValue::ContentType(cd)) => {
                    e.attachment |= cd.ctype().eq_ignore_ascii_case("attachment")
                        || cd.attribute("filename").is_some();
                }
                (HeaderName::ContentId, v) => {
                    e.content_id = v.as_text().map(|s| s.trim_matches(['<', '>', ' ']).into());
                }
                _ => {}
            }
        }
    }
    e.attachment |= e.param("name").is_some();
    if e.ctype == "multipart"
        && let Some(b) = e.param("boundary").filter(|b| !b.is_empty())
    {
        e.multipart = Some(Multipart {
            boundary: b.to_string(),
            children: Vec::new(),
            close_at: None,
        });
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(msg: &[u8], e: &Entity) -> String {
        String::from_utf8_lossy(&msg[e.body_start..e.end]).into_owned()
    }

    #[test]
    fn splits_nested_multiparts_on_exact_delimiters() {
        let msg = concat!(
            "Content-Type: multipart/mixed; boundary=\"a\"\r\n\r\n",
            "preamble\r\n",
            "--a\r\n",
            "Content-Type: multipart/alternative; boundary=ab\r\n\r\n",
            "--ab\r\n\r\nplain\r\n",
            "--ab \r\nContent-Type: text/html\r\n\r\n<p>x</p>\r\n--ab--\r\n",
            "--a\r\nContent-Type: application/pdf; name=x.pdf\r\n\r\nPDF\r\n",
            "--a--\r\nepilogue\r\n",
        )
        .as_bytes();
        let t = walk(msg).unwrap();
        let e = &t.entities;
        assert_eq!(e.len(), 5);
        let root = e[0].multipart.as_ref().unwrap();
        assert_eq!(root.children, vec![1, 2]);
        assert_eq!(&msg[root.close_at.unwrap()..][..7], b"\r\n--a--");
        assert!(e[2].attachment);
        assert_eq!(body(msg, &e[2]), "PDF");
        let alt = e[1].multipart.as_ref().unwrap();
        assert_eq!(body(msg, &e[alt.children[0]]), "plain");
        assert_eq!(body(msg, &e[alt.children[1]]), "<p>x</p>");
        assert!(e[alt.children[1]].is("text", "html"));
        assert_eq!(e[alt.children[1]].depth, 2);
    }

    #[test]
    fn unclosed_multipart_runs_to_the_end_and_cannot_grow() {
        let msg = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nhello\r\n";
        let t = walk(msg).unwrap();
        assert_eq!(body(msg, &t.entities[1]), "hello\r\n");
        assert_eq!(t.entities[0].multipart.as_ref().unwrap().close_at, None);
    }

    #[test]
    fn deep_nesting_is_refused_without_recursion() {
        let mut s = String::new();
        for i in 0..10_000 {
            s.push_str(&format!(
                "Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n"
            ));
        }
        s.push_str("\r\nx\r\n");
        let r = std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(move || walk(s.as_bytes()).map(|_| ()))
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(r, Err(StructureError::TooDeep));
    }

    #[test]
    fn part_count_is_capped() {
        let mut s = String::from("Content-Type: multipart/mixed; boundary=b\r\n\r\n");
        for _ in 0..MAX_PARTS {
            s.push_str("--b\r\n\r\nx\r\n");
        }
        s.push_str("--b--\r\n");
        assert_eq!(
            walk(s.as_bytes()).unwrap_err(),
            StructureError::TooManyParts
        );
    }

    #[test]
    fn digest_children_default_to_messages() {
        let msg = b"Content-Type: multipart/digest; boundary=d\r\n\r\n--d\r\n\r\nFrom: a@b\r\n\r\nx\r\n--d--\r\n";
        let t = walk(msg).unwrap();
        assert!(t.entities[1].is("message", "rfc822"));
    }
}
