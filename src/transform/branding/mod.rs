//! Per-project branding: a logo header and a contact footer in every HTML body, a text footer
//! in every plain-text body, spliced into the original bytes.
//!
//! Only the body parts that change are decoded, edited and re-encoded (quoted-printable or
//! base64 with short lines); every other byte — other headers, attachments, other parts — is
//! copied as it was. Which parts are bodies follows what mail clients show: every alternative
//! of a `multipart/alternative`, the root of a `multipart/related`, and in a `multipart/mixed`
//! the first inline body gets the header and the last one the footer. Attachments (any part
//! with `Content-Disposition: attachment` or a file name) and encapsulated messages are never
//! touched; signed or encrypted messages (`multipart/signed`, `multipart/encrypted`,
//! `application/pkcs7-mime`) pass through unchanged, as does a message that already carries
//! [`MARKER_HEADER`], so branding is idempotent.
//!
//! The embedded logo goes into the nearest enclosing `multipart/related` of the HTML (added as
//! its last part), or the HTML part is wrapped in a new `multipart/related` with the logo
//! beside it; either way `cid:` resolves within the message.
//!
//! Bounded: the structure walk ([`mime`]) is iterative and refuses more than [`MAX_DEPTH`]
//! levels or [`MAX_PARTS`] parts with [`BrandingError::TooComplex`], which the session answers
//! with `554 5.6.0` — such a message is broken or hostile, and passing it on unbranded would
//! let any sender opt out of branding by padding its message.

pub mod encoding;
pub mod html;
pub mod mime;
pub mod settings;
pub mod template;

use std::collections::HashMap;

use memchr::memmem;

use self::encoding::{Charset, ascii_html, classify, newline_of, to_unicode};
use self::mime::{Cte, Entity, Tree};
pub use self::mime::{MAX_DEPTH, MAX_PARTS, StructureError};
pub use self::settings::{BrandingSettings, BrandingStore, BrandingUpdate, SettingsError};
use self::template::{HTML_MARKER, Template, Values};
use super::TransformContext;

/// Added to the top-level header of every branded message (value: the project id).
pub const MARKER_HEADER: &str = "X-Smtp-Relay-Branding";

/// A project's branding, prepared for use (see [`BrandingStore::active`]).
#[derive(Debug)]
pub struct Branding {
    pub project: String,
    values: Values,
    header: Template,
    footer: Template,
    text_footer: Template,
    logo: Option<settings::PreparedLogo>,
    logo_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrandingError {
    #[error("message structure too complex to brand: {0}")]
    TooComplex(#[from] StructureError),
}

/// Replaces `msg[start..end]` with `bytes` (an insertion when `start == end`).
struct Edit {
    start: usize,
    end: usize,
    bytes: Vec<u8>,
}

/// Brands `msg` with `b`; returns it unchanged when there is nothing to brand.
pub fn apply(
    ctx: &TransformContext<'_>,
    b: &Branding,
    msg: Vec<u8>,
) -> Result<Vec<u8>, BrandingError> {
    let tree = mime::walk(&msg)?;
    let root = &tree.entities[0];
    let marker = MARKER_HEADER.to_ascii_lowercase();
    if !root.has_separator || root.has_field(&marker) || tree.entities.iter().any(protected) {
        return Ok(msg);
    }
    let mut job = Job {
        msg: &msg,
        tree: &tree,
        b,
        ctx,
        edits: Vec::new(),
        additions: Vec::new(),
        related_cids: HashMap::new(),
        counter: 0,
        root_rewritten: false,
    };
    for (i, header, footer) in bodies(&tree) {
        job.brand(i, header, footer);
    }
    if job.edits.is_empty() {
        return Ok(msg);
    }
    if !job.root_rewritten {
        let at = root.body_start - 2;
        job.edits.push(Edit {
            start: at,
            end: at,
            bytes: job.marker_line().into_bytes(),
        });
    }
    let mut edits = std::mem::take(&mut job.edits);
    edits.append(&mut job.additions);
    let out = match splice(&msg, edits) {
        Some(out) if encoding::fits_identity(&out, false) => out,
        _ => {
            // Cannot happen by construction; never let a bug put bad bytes on the wire.
            tracing::error!(
                id = ctx.message_id,
                "branding produced invalid output; message left unbranded"
            );
            return Ok(msg);
        }
    };
    Ok(out)
}

fn protected(e: &Entity) -> bool {
    e.is("multipart", "signed")
        || e.is("multipart", "encrypted")
        || (e.ctype == "application"
            && matches!(
                e.subtype.as_str(),
                "pkcs7-mime" | "x-pkcs7-mime" | "pgp-encrypted"
            ))
}

fn is_text_body(e: &Entity) -> bool {
    e.ctype == "text" && matches!(e.subtype.as_str(), "plain" | "html") && e.multipart.is_none()
}

/// The body parts to brand: (entity, gets the header, gets the footer). Iterative.
fn bodies(tree: &Tree) -> Vec<(usize, bool, bool)> {
    let e = &tree.entities;
    let mut out = Vec::new();
    let mut pending = vec![(0usize, true, true)];
    while let Some((i, header, footer)) = pending.pop() {
        if e[i].attachment {
            continue;
        }
        let Some(mp) = &e[i].multipart else {
            if is_text_body(&e[i]) {
                out.push((i, header, footer));
            }
            continue;
        };
        match e[i].subtype.as_str() {
            "alternative" => pending.extend(mp.children.iter().map(|&c| (c, header, footer))),
            "related" => {
                let start = e[i].param("start").map(|s| s.trim_matches(['<', '>', ' ']));
                let root = start
                    .and_then(|s| {
                        mp.children
                            .iter()
                            .find(|&&c| e[c].content_id.as_deref() == Some(s))
                    })
                    .or(mp.children.first());
                if let Some(&r) = root {
                    pending.push((r, header, footer));
                }
            }
            _ => {
                let shown: Vec<usize> = mp
                    .children
                    .iter()
                    .copied()
                    .filter(|&c| {
                        !e[c].attachment && (is_text_body(&e[c]) || e[c].multipart.is_some())
                    })
                    .collect();
                match shown.as_slice() {
                    [] => {}
                    [only] => pending.push((*only, header, footer)),
                    [first, .., last] => {
                        pending.push((*first, header, false));
                        pending.push((*last, false, footer));
                    }
                }
            }
        }
    }
    out
}

fn splice(msg: &[u8], mut edits: Vec<Edit>) -> Option<Vec<u8>> {
    // Stable: on equal positions, part edits (pushed first) come before additions.
    edits.sort_by_key(|e| (e.start, e.end));
    let extra: usize = edits.iter().map(|e| e.bytes.len()).sum();
    let mut out = Vec::with_capacity(msg.len() + extra);
    let mut pos = 0;
    for e in edits {
        if e.start < pos || e.end < e.start || e.end > msg.len() {
            return None;
        }
        out.extend_from_slice(&msg[pos..e.start]);
        out.extend_from_slice(&e.bytes);
        pos = e.end;
    }
    out.extend_from_slice(&msg[pos..]);
    Some(out)
}

struct Job<'a> {
    msg: &'a [u8],
    tree: &'a Tree,
    b: &'a Branding,
    ctx: &'a TransformContext<'a>,
    /// Changes to existing parts.
    edits: Vec<Edit>,
    /// Logo parts added to existing `multipart/related` parts.
    additions: Vec<Edit>,
    /// `multipart/related` entity → the Content-ID of the logo added to it.
    related_cids: HashMap<usize, String>,
    counter: usize,
    root_rewritten: bool,
}

impl Job<'_> {
    fn brand(&mut self, i: usize, header: bool, footer: bool) {
        let e = &self.tree.entities[i];
        if !e.has_separator {
            return;
        }
        let Some(content) = encoding::decode(&self.msg[e.body_start..e.end], e.cte) else {
            return;
        };
        let charset = classify(e.param("charset"));
        if e.subtype == "html" {
            if header || footer {
                // Non-ASCII goes in as character references unless the part is UTF-8 and
                // already encoded: a 7bit part then stays 7bit and is not re-encoded.
                let raw_utf8 = charset == Charset::Utf8 && e.cte != Cte::SevenBit;
                self.brand_html(i, content, charset, raw_utf8, header, footer);
            }
        } else if footer {
            self.brand_text(i, content, charset);
        }
    }

    fn brand_text(&mut self, i: usize, content: Vec<u8>, charset: Charset) {
        // Appending outside an inline PGP block would read as signed text that is not.
        if memmem::find(&content, b"-----BEGIN PGP").is_some() {
            return;
        }
        let hosted = self.b.logo_url.as_deref().unwrap_or("");
        let render = |nl| self.b.text_footer.render(&self.b.values, hosted, false, nl);
        let in_place = matches!(charset, Charset::Utf8)
            || (!matches!(charset, Charset::Incompatible(_)) && render("\n").is_ascii());
        if in_place {
            let nl = newline_of(&content);
            let new = append(&content, render(nl).as_bytes(), nl);
            self.replace(i, new, false, None);
        } else if let Some(text) = to_unicode(&content, &charset) {
            let nl = newline_of(text.as_bytes());
            let new = append(text.as_bytes(), render(nl).as_bytes(), nl);
            self.replace(i, new, true, None);
        }
    }

    fn brand_html(
        &mut self,
        i: usize,
        content: Vec<u8>,
        charset: Charset,
        raw_utf8: bool,
        header: bool,
        footer: bool,
    ) {
        if matches!(charset, Charset::Incompatible(_))
            || memmem::find(&content, HTML_MARKER.as_bytes()).is_some()
        {
            return;
        }
        let b = self.b;
        let needs_logo = b.logo.is_some()
            && ((header && b.header.uses_logo()) || (footer && b.footer.uses_logo()));
        let (logo_src, wrap_cid) = match (needs_logo, self.related_ancestor(i)) {
            (false, _) => (b.logo_url.clone().unwrap_or_default(), None),
            (true, Some(rel)) => (format!("cid:{}", self.related_cid(rel)), None),
            (true, None) => {
                let cid = self.new_cid();
                (format!("cid:{cid}"), Some(cid))
            }
        };
        let nl = newline_of(&content);
        let block = |t: &Template, kind: &str| {
            let s = format!(
                "{nl}<!--{HTML_MARKER}:{kind}-->{nl}{}{nl}",
                t.render(&b.values, &logo_src, true, nl)
            );
            if raw_utf8 { s } else { ascii_html(&s) }
        };
        let (h, f) = html::insertion_points(&content);
        let mut out = Vec::with_capacity(content.len() + 4096);
        out.extend_from_slice(&content[..h]);
        if header {
            out.extend_from_slice(block(&b.header, "header").as_bytes());
        }
        out.extend_from_slice(&content[h..f]);
        if footer {
            out.extend_from_slice(block(&b.footer, "footer").as_bytes());
        }
        out.extend_from_slice(&content[f..]);
        self.replace(i, out, false, wrap_cid);
    }

    /// The nearest enclosing `multipart/related`, if a logo part can be added to it.
    fn related_ancestor(&self, i: usize) -> Option<usize> {
        let e = &self.tree.entities;
        let mut p = e[i].parent;
        while let Some(k) = p {
            if e[k].is("multipart", "related") {
                return e[k].multipart.as_ref()?.close_at.map(|_| k);
            }
            p = e[k].parent;
        }
        None
    }

    /// The logo's Content-ID inside `related`, adding the logo part on first use.
    fn related_cid(&mut self, related: usize) -> String {
        if let Some(cid) = self.related_cids.get(&related) {
            return cid.clone();
        }
        let cid = self.new_cid();
        let e = &self.tree.entities[related];
        if let Some(mp) = &e.multipart
            && let Some(at) = mp.close_at
        {
            let mut bytes = format!("\r\n--{}\r\n", mp.boundary).into_bytes();
            bytes.extend_from_slice(&self.logo_part(&cid));
            self.additions.push(Edit {
                start: at,
                end: at,
                bytes,
            });
        }
        self.related_cids.insert(related, cid.clone());
        cid
    }

    fn new_cid(&mut self) -> String {
        self.counter += 1;
        format!(
            "logo.{}.{}@{}",
            self.ctx.message_id, self.counter, self.ctx.hostname
        )
    }

    fn marker_line(&self) -> String {
        let value: String = self
            .b
            .project
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(64)
            .collect();
        format!("{MARKER_HEADER}: {value}\r\n")
    }

    fn logo_part(&self, cid: &str) -> Vec<u8> {
        let Some(logo) = &self.b.logo else {
            return Vec::new();
        };
        let mut p = format!(
            "Content-Type: {}\r\nContent-Transfer-Encoding: base64\r\nContent-ID: <{cid}>\r\nContent-Disposition: inline; filename=\"{}\"\r\n\r\n",
            logo.content_type, logo.filename
        )
        .into_bytes();
        p.extend_from_slice(&logo.base64);
        p
    }

    /// A boundary that occurs in none of `inside`.
    fn new_boundary(&mut self, inside: &[&[u8]]) -> String {
        loop {
            self.counter += 1;
            let b = format!("=_smtp-relay.{}.{}", self.ctx.message_id, self.counter);
            let delimiter = format!("--{b}");
            if inside
                .iter()
                .all(|s| memmem::find(s, delimiter.as_bytes()).is_none())
            {
                return b;
            }
        }
    }

    /// Replaces entity `i`'s body with `content`, re-encoded; rewrites its Content-* fields
    /// when the encoding or charset changes, and wraps it with the logo when `wrap_cid` is set.
    fn replace(&mut self, i: usize, content: Vec<u8>, to_utf8: bool, wrap_cid: Option<String>) {
        let e = &self.tree.entities[i];
        let root = i == 0;
        let cte = encoding::choose(e.cte, &content);
        let body = encoding::encode(&content, cte);
        if cte == e.cte && !to_utf8 && wrap_cid.is_none() {
            self.push_edit(e.body_start, e.end, body, root);
            return;
        }

        // (is a Content-* field, bytes), in the original order.
        let mut fields: Vec<(bool, Vec<u8>)> = Vec::new();
        let (mut has_ct, mut has_cte) = (false, false);
        for f in &e.fields {
            let raw = &self.msg[f.start..f.end];
            let line = match f.name.as_str() {
                "content-type" if to_utf8 => {
                    has_ct = true;
                    match utf8_content_type(e) {
                        Some(l) => l.into_bytes(),
                        None => return,
                    }
                }
                "content-type" => {
                    has_ct = true;
                    raw.to_vec()
                }
                "content-transfer-encoding" => {
                    has_cte = true;
                    format!("Content-Transfer-Encoding: {}\r\n", encoding::cte_name(cte))
                        .into_bytes()
                }
                // No longer true for the changed body.
                "content-md5" | "content-length" => continue,
                _ => raw.to_vec(),
            };
            fields.push((f.name.starts_with("content-"), line));
        }
        let mut added: Vec<u8> = Vec::new();
        if to_utf8 && !has_ct {
            added.extend_from_slice(b"Content-Type: text/plain; charset=utf-8\r\n");
        }
        if !has_cte && cte != Cte::SevenBit {
            added.extend_from_slice(
                format!("Content-Transfer-Encoding: {}\r\n", encoding::cte_name(cte)).as_bytes(),
            );
        }
        let mime_version = if root && !e.has_field("mime-version") {
            b"MIME-Version: 1.0\r\n".as_slice()
        } else {
            b""
        };

        let mut out = Vec::with_capacity(body.len() + 1024);
        match wrap_cid {
            None => {
                for (_, l) in &fields {
                    out.extend_from_slice(l);
                }
                if !added.is_empty() {
                    out.extend_from_slice(mime_version);
                }
                out.extend_from_slice(&added);
                if root {
                    out.extend_from_slice(self.marker_line().as_bytes());
                    self.root_rewritten = true;
                }
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(&body);
            }
            Some(cid) => {
                // At the top level only the Content-* fields move into the wrapped part.
                let mut inner = Vec::new();
                for (is_content, l) in &fields {
                    if *is_content || !root {
                        inner.extend_from_slice(l);
                    } else {
                        out.extend_from_slice(l);
                    }
                }
                inner.extend_from_slice(&added);
                let boundary = self.new_boundary(&[&inner, &body]);
                if root {
                    out.extend_from_slice(mime_version);
                }
                out.extend_from_slice(
                    format!(
                        "Content-Type: multipart/related;\r\n\tboundary=\"{boundary}\";\r\n\ttype=\"text/html\"\r\n"
                    )
                    .as_bytes(),
                );
                if root {
                    out.extend_from_slice(self.marker_line().as_bytes());
                    self.root_rewritten = true;
                }
                out.extend_from_slice(format!("\r\n--{boundary}\r\n").as_bytes());
                out.extend_from_slice(&inner);
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(&body);
                out.extend_from_slice(format!("\r\n--{boundary}\r\n").as_bytes());
                out.extend_from_slice(&self.logo_part(&cid));
                out.extend_from_slice(format!("\r\n--{boundary}--").as_bytes());
            }
        }
        self.push_edit(e.start, e.end, out, root);
    }

    /// Records a replacement; what runs to the end of the message ends with CRLF.
    fn push_edit(&mut self, start: usize, end: usize, mut bytes: Vec<u8>, to_end: bool) {
        if to_end && !bytes.ends_with(b"\r\n") {
            bytes.extend_from_slice(b"\r\n");
        }
        self.edits.push(Edit { start, end, bytes });
    }
}

/// `Content-Type` of `e` with `charset=utf-8`, other parameters kept; `None` if a parameter
/// cannot be written back safely as a quoted string.
fn utf8_content_type(e: &Entity) -> Option<String> {
    let mut s = format!("Content-Type: {}/{}; charset=utf-8", e.ctype, e.subtype);
    for (name, value) in &e.params {
        if name == "charset" {
            continue;
        }
        let safe = |t: &str| {
            t.len() < 200
                && t.chars().all(|c| c.is_ascii_graphic() || c == ' ')
                && !t.contains(['"', '\\'])
        };
        if !safe(name) || name.contains([' ', '=', ';']) || !safe(value) {
            return None;
        }
        s.push_str(&format!(";\r\n\t{name}=\"{value}\""));
    }
    s.push_str("\r\n");
    Some(s)
}

/// `content` + `footer` on a new line, keeping a final line break if there was one.
fn append(content: &[u8], footer: &[u8], nl: &str) -> Vec<u8> {
    let nl = nl.as_bytes();
    let mut out = Vec::with_capacity(content.len() + footer.len() + 4);
    out.extend_from_slice(content);
    let ended = content.ends_with(nl);
    if !content.is_empty() && !ended {
        out.extend_from_slice(nl);
    }
    out.extend_from_slice(footer);
    if ended {
        out.extend_from_slice(nl);
    }
    out
}
