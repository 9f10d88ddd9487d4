//! Transfer encodings and charsets for the parts branding changes.
//!
//! Decoding uses mail-parser's decoders (the same ones that read the message elsewhere).
//! Encoding is written here because its output must meet the relay's own wire rules exactly:
//! CRLF line ends only, short lines (quoted-printable ≤ 76, base64 76), nothing else.

use base64::Engine as _;
use mail_parser::decoders::{
    base64::base64_decode, charsets::map::charset_decoder,
    quoted_printable::quoted_printable_decode,
};

use super::mime::Cte;

/// Longest line SMTP allows, without its CRLF.
pub const MAX_LINE: usize = 998;
const QP_LINE: usize = 76;
const B64_LINE: usize = 76;

/// The body bytes after undoing the transfer encoding; `None` when it cannot be decoded
/// safely (unknown encoding, invalid quoted-printable or base64): then the part is left alone.
pub fn decode(raw: &[u8], cte: Cte) -> Option<Vec<u8>> {
    match cte {
        Cte::SevenBit | Cte::EightBit => Some(raw.to_vec()),
        Cte::QuotedPrintable => quoted_printable_decode(raw),
        Cte::Base64 => base64_decode(raw),
        Cte::Unknown => None,
    }
}

/// True when `bytes` can go on the wire as they are: CRLF line ends only, no NUL, no line
/// over [`MAX_LINE`] octets, and (for 7bit) ASCII only.
pub fn fits_identity(bytes: &[u8], seven_bit: bool) -> bool {
    let mut line = 0usize;
    let mut prev = 0u8;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            0 => return false,
            b'\r' if bytes.get(i + 1) != Some(&b'\n') => return false,
            b'\n' if prev != b'\r' => return false,
            b'\n' => line = 0,
            b'\r' => {}
            _ if seven_bit && b >= 0x80 => return false,
            _ => {
                line += 1;
                if line > MAX_LINE {
                    return false;
                }
            }
        }
        prev = b;
    }
    true
}

/// The encoding a changed part leaves with: base64 and quoted-printable stay what they were;
/// an unencoded part stays unencoded while it still fits, else becomes quoted-printable (so a
/// 7bit message never turns 8bit and no line grows past the limit).
pub fn choose(original: Cte, content: &[u8]) -> Cte {
    match original {
        Cte::Base64 | Cte::QuotedPrintable => original,
        Cte::SevenBit if fits_identity(content, true) => Cte::SevenBit,
        Cte::EightBit if fits_identity(content, false) => Cte::EightBit,
        _ => Cte::QuotedPrintable,
    }
}

pub fn cte_name(cte: Cte) -> &'static str {
    match cte {
        Cte::SevenBit => "7bit",
        Cte::EightBit => "8bit",
        Cte::QuotedPrintable => "quoted-printable",
        Cte::Base64 => "base64",
        Cte::Unknown => "binary",
    }
}

/// Encodes `content` for the wire. Base64 output has no trailing CRLF; quoted-printable and
/// unencoded output end with CRLF exactly when the content does.
pub fn encode(content: &[u8], cte: Cte) -> Vec<u8> {
    match cte {
        Cte::Base64 => base64_lines(content),
        Cte::QuotedPrintable => quoted_printable(content),
        _ => content.to_vec(),
    }
}

pub fn base64_lines(content: &[u8]) -> Vec<u8> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(content);
    let mut out = Vec::with_capacity(encoded.len() + encoded.len() / B64_LINE * 2 + 2);
    for (i, chunk) in encoded.as_bytes().chunks(B64_LINE).enumerate() {
        if i > 0 {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(chunk);
    }
    out
}

/// RFC 2045 quoted-printable: CRLF in the content is a hard line break; a lone CR or LF is
/// encoded; trailing white space is encoded; lines are soft-wrapped at 76 characters.
pub fn quoted_printable(content: &[u8]) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = Vec::with_capacity(content.len() + content.len() / 8 + 16);
    let mut line = 0usize;
    let mut i = 0;
    while i < content.len() {
        let b = content[i];
        if b == b'\r' && content.get(i + 1) == Some(&b'\n') {
            out.extend_from_slice(b"\r\n");
            line = 0;
            i += 2;
            continue;
        }
        let at_line_end = match content.get(i + 1) {
            None => true,
            Some(b'\r') => content.get(i + 2) == Some(&b'\n'),
            _ => false,
        };
        let literal = match b {
            b'=' => false,
            b' ' | b'\t' => !at_line_end,
            33..=126 => true,
            _ => false,
        };
        let width = if literal { 1 } else { 3 };
        // Keep room for the soft break "=" unless this is the last character of the line.
        let limit = if at_line_end { QP_LINE } else { QP_LINE - 1 };
        if line + width > limit {
            out.extend_from_slice(b"=\r\n");
            line = 0;
        }
        if literal {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'=', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
        }
        line += width;
        i += 1;
    }
    out
}

/// How a part's declared charset lets branding insert text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Charset {
    /// No charset parameter (US-ASCII by definition, often UTF-8 in practice).
    Absent,
    Utf8,
    /// A charset in which ASCII bytes mean ASCII characters wherever a tag can start
    /// (US-ASCII, ISO-8859-*, windows-125*, GBK, Big5, Shift_JIS, EUC-*…).
    AsciiCompatible(String),
    /// UTF-16/32, UTF-7, ISO-2022-*, HZ: inserted ASCII bytes would not mean ASCII.
    Incompatible(String),
}

pub fn classify(charset: Option<&str>) -> Charset {
    let Some(raw) = charset else {
        return Charset::Absent;
    };
    let name = raw.trim().to_ascii_lowercase();
    if name == "utf-8" || name == "utf8" {
        return Charset::Utf8;
    }
    let incompatible = ["utf-16", "utf16", "utf-32", "utf32", "ucs-", "ucs2", "ucs4"]
        .iter()
        .chain(&[
            "utf-7",
            "utf7",
            "unicode",
            "iso-2022",
            "csiso2022",
            "hz-gb",
            "hz",
        ])
        .any(|p| name.starts_with(p));
    if incompatible {
        Charset::Incompatible(name)
    } else {
        Charset::AsciiCompatible(name)
    }
}

/// Decodes `bytes` in `charset` to Unicode; `None` when mail-parser does not know the charset.
pub fn to_unicode(bytes: &[u8], charset: &Charset) -> Option<String> {
    let name = match charset {
        Charset::Utf8 => return String::from_utf8(bytes.to_vec()).ok(),
        Charset::Absent => {
            return match std::str::from_utf8(bytes) {
                Ok(s) => Some(s.to_string()),
                Err(_) => charset_decoder(b"windows-1252").map(|d| d(bytes)),
            };
        }
        Charset::AsciiCompatible(n) | Charset::Incompatible(n) => n,
    };
    charset_decoder(name.as_bytes()).map(|d| d(bytes))
}

/// Writes non-ASCII characters as HTML numeric character references, so the text means the
/// same in any ASCII-compatible charset.
pub fn ascii_html(s: &str) -> String {
    if s.is_ascii() {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            out.push_str(&format!("&#{};", c as u32));
        }
    }
    out
}

/// The line break a body already uses (CRLF unless it only has bare LFs).
pub fn newline_of(content: &[u8]) -> &'static str {
    match memchr::memchr(b'\n', content) {
        Some(p) if p == 0 || content[p - 1] != b'\r' => "\n",
        _ => "\r\n",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_printable_round_trips_and_wraps() {
        let text = "caf\u{e9} = 10 \u{20ac}  \r\n".repeat(20) + &"x".repeat(300) + " \ttrailing \t";
        let enc = quoted_printable(text.as_bytes());
        assert!(fits_identity(&enc, true));
        assert!(enc.split(|&b| b == b'\n').all(|l| l.len() <= 77));
        assert_eq!(quoted_printable_decode(&enc).unwrap(), text.as_bytes());
        // Lone CR and LF survive; "=" is always encoded.
        let odd = b"a\rb\nc=d";
        let enc = quoted_printable(odd);
        assert_eq!(enc, b"a=0Db=0Ac=3Dd");
    }

    #[test]
    fn identity_only_when_it_fits() {
        assert!(fits_identity(b"ok\r\nfine\r\n", true));
        assert!(!fits_identity("\u{e9}\r\n".as_bytes(), true));
        assert!(fits_identity("\u{e9}\r\n".as_bytes(), false));
        assert!(!fits_identity(b"bare\nlf", false));
        assert!(!fits_identity(&[b'x'; 999], false));
        assert!(fits_identity(&[b'x'; 998], false));
        assert_eq!(
            choose(Cte::SevenBit, "\u{e9}".as_bytes()),
            Cte::QuotedPrintable
        );
        assert_eq!(choose(Cte::Base64, b"x"), Cte::Base64);
    }

    #[test]
    fn base64_lines_are_short() {
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let enc = base64_lines(&data);
        assert!(enc.split(|&b| b == b'\n').all(|l| l.len() <= 77));
        assert_eq!(base64_decode(&enc).unwrap(), data);
    }

    #[test]
    fn charsets() {
        assert_eq!(classify(Some("UTF-8")), Charset::Utf8);
        assert!(matches!(
            classify(Some("ISO-8859-1")),
            Charset::AsciiCompatible(_)
        ));
        assert!(matches!(
            classify(Some("iso-2022-jp")),
            Charset::Incompatible(_)
        ));
        let latin1 = to_unicode(b"caf\xe9", &classify(Some("iso-8859-1"))).unwrap();
        assert_eq!(latin1, "caf\u{e9}");
        assert_eq!(ascii_html("Caf\u{e9} \u{1f600}"), "Caf&#233; &#128512;");
        assert_eq!(newline_of(b"a\nb"), "\n");
        assert_eq!(newline_of(b"a\r\nb"), "\r\n");
    }
}
