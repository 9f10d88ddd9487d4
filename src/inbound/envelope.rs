//! MAIL FROM and RCPT TO: who may start a transaction, and with which addresses.
//!
//! Nothing is accepted before AUTH. The sender must belong to the authenticated project
//! (policy decides); recipients are counted against the per-message limit, and the same
//! recipient given twice is kept once (as Postfix does). Both commands also ask whether the
//! project's rate windows have room (`quota.rs`); neither consumes any.
//!
//! smtp-proto parses the verb and the path only: the ESMTP parameters are cut off before it
//! sees the line ([`without_params`]) and parsed here, because its parser merges a parameter
//! given twice, wraps a huge `SIZE` to a small number, decodes malformed xtext leniently and
//! silently accepts extensions we do not offer. Parameters kept with the message: `BODY`,
//! `SMTPUTF8`, `RET`, `ENVID` (MAIL) and `NOTIFY`, `ORCPT` (RCPT), repeated to the upstream
//! when it offers the extension (`outbound/upstream.rs`).

use std::collections::HashSet;

use smtp_proto::{MailFrom, RcptTo};
use tokio::io::{AsyncRead, AsyncWrite};

use super::connection::Connection;
use super::reply::{self, Reply};
use super::session::{Flow, Session};
use crate::policy::sender::{self, RecipientKey};
use crate::queue::spool::{MailParams, RcptParams};

/// The parameters of the open transaction, beside `Session::mail_from` and `Session::rcpts`.
#[derive(Debug, Default)]
pub struct TxParams {
    pub mail: MailParams,
    /// One per entry of `Session::rcpts`, in the same order.
    pub rcpts: Vec<RcptParams>,
    /// The recipients so far, to keep one of each.
    seen: HashSet<RecipientKey>,
}

/// A refused MAIL or RCPT parameter list (replies in `reply.rs`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    #[error("Invalid parameter {0}")]
    Invalid(String),
    #[error("Duplicate parameter {0}")]
    Duplicate(String),
    #[error("Unsupported parameter {0}")]
    Unsupported(String),
}

/// MAIL FROM's parameters: `SIZE` (saturated: anything over `u64::MAX` is `u64::MAX`)
/// and what the message keeps.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MailCommand {
    pub size: Option<u64>,
    pub params: MailParams,
}

/// Where the path of a `MAIL`/`RCPT` line ends (index of its closing `>`), honouring a
/// quoted local part. `None` for other commands and for lines without a bracketed path.
fn path_end(line: &[u8]) -> Option<usize> {
    let verb = line.get(..5)?;
    if !(verb.eq_ignore_ascii_case(b"MAIL ") || verb.eq_ignore_ascii_case(b"RCPT ")) {
        return None;
    }
    let open = line.iter().position(|&b| b == b'<')?;
    let (mut quoted, mut escaped) = (false, false);
    for (i, &b) in line.iter().enumerate().skip(open + 1) {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b'>' if !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

/// The line smtp-proto gets: a `MAIL`/`RCPT` line without its parameters (they are
/// parsed by [`parse_mail_params`]/[`parse_rcpt_params`]); any other line unchanged.
pub fn without_params(line: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    match path_end(line) {
        Some(end) if line.len() > end + 3 => {
            let mut short = line[..=end].to_vec();
            short.extend_from_slice(b"\r\n");
            std::borrow::Cow::Owned(short)
        }
        _ => std::borrow::Cow::Borrowed(line),
    }
}

/// The parameter text after the path, without the line end.
fn params_of(line: &str) -> &str {
    let rest = match path_end(line.as_bytes()) {
        Some(end) => &line[end + 1..],
        None => "",
    };
    rest.trim_end_matches(['\r', '\n'])
}

/// Splits `KEY[=VALUE]` tokens, checking keyword syntax and duplicates.
fn tokens(params: &str) -> Result<Vec<(String, Option<&str>)>, ParamError> {
    let mut out: Vec<(String, Option<&str>)> = Vec::new();
    for token in params.split(' ').filter(|t| !t.is_empty()) {
        let (key, value) = match token.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (token, None),
        };
        let key_ok = key
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        // esmtp-value: no controls, spaces or '=' (UTF-8 is checked per parameter).
        let value_ok = value.is_none_or(|v| {
            !v.is_empty() && !v.chars().any(|c| c.is_control() || c == '=' || c == ' ')
        });
        if !key_ok || !value_ok {
            return Err(ParamError::Invalid(
                reply::printable(key).to_ascii_uppercase(),
            ));
        }
        let key = key.to_ascii_uppercase();
        if out.iter().any(|(k, _)| *k == key) {
            return Err(ParamError::Duplicate(key));
        }
        out.push((key, value));
    }
    Ok(out)
}

/// RFC 3461 xtext: `+XX` hex escapes for what is not plain; nothing decodes to a control
/// character (a CR or LF smuggled in as `+0D`/`+0A`) or to a non-ASCII byte. Raw UTF-8 is
/// allowed only where `utf8` says so (RFC 6533 `ORCPT=utf-8;…` under SMTPUTF8).
fn valid_xtext(s: &str, utf8: bool) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                let hex = b
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok());
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) if (0x20..0x7f).contains(&v) => i += 3,
                    _ => return false,
                }
            }
            b'=' => return false,
            0x21..=0x7e => i += 1,
            0x80.. if utf8 => i += 1,
            _ => return false,
        }
    }
    !b.is_empty()
}

/// `SIZE=` digits only, saturating: `Ok(u64::MAX)` for anything too large to hold.
fn parse_size(v: &str) -> Option<u64> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(v.bytes().fold(0u64, |n, d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    }))
}

/// Parses MAIL FROM's parameters from the whole command line.
pub fn parse_mail_params(line: &str) -> Result<MailCommand, ParamError> {
    let mut cmd = MailCommand::default();
    let invalid = |k: &str| Err(ParamError::Invalid(k.to_string()));
    for (key, value) in tokens(params_of(line))? {
        match (key.as_str(), value) {
            ("SIZE", Some(v)) => match parse_size(v) {
                Some(n) => cmd.size = Some(n),
                None => return invalid("SIZE"),
            },
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("8BITMIME") => {
                cmd.params.body_8bitmime = true
            }
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("7BIT") => {}
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("BINARYMIME") => {
                return Err(ParamError::Unsupported("BODY=BINARYMIME".into()));
            }
            ("SMTPUTF8", None) => cmd.params.smtputf8 = true,
            ("RET", Some(v))
                if v.eq_ignore_ascii_case("FULL") || v.eq_ignore_ascii_case("HDRS") =>
            {
                cmd.params.ret = Some(v.to_ascii_uppercase())
            }
            // RFC 3461: at most 100 characters.
            ("ENVID", Some(v)) if v.len() <= 100 && valid_xtext(v, false) => {
                cmd.params.envid = Some(v.to_string())
            }
            // RFC 4954: sent by authenticated clients such as Postfix; checked, not kept.
            ("AUTH", Some(v)) if v == "<>" || valid_xtext(v, cmd.params.smtputf8) => {}
            ("SIZE" | "BODY" | "SMTPUTF8" | "RET" | "ENVID" | "AUTH", _) => return invalid(&key),
            _ => return Err(ParamError::Unsupported(key)),
        }
    }
    Ok(cmd)
}

/// Parses RCPT TO's parameters from the whole command line. `smtputf8`: the transaction
/// declared SMTPUTF8, so ORCPT may carry UTF-8.
pub fn parse_rcpt_params(line: &str, smtputf8: bool) -> Result<RcptParams, ParamError> {
    let mut params = RcptParams::default();
    for (key, value) in tokens(params_of(line))? {
        match (key.as_str(), value) {
            ("NOTIFY", Some(v)) => params.notify = Some(notify(v)?),
            ("ORCPT", Some(v)) => {
                let (kind, addr) = v
                    .split_once(';')
                    .ok_or_else(|| ParamError::Invalid(key.clone()))?;
                let kind_ok = !kind.is_empty()
                    && kind.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
                // RFC 3461: at most 500 characters.
                if !kind_ok || v.len() > 500 || !valid_xtext(addr, smtputf8) {
                    return Err(ParamError::Invalid(key));
                }
                params.orcpt = Some(v.to_string());
            }
            ("NOTIFY" | "ORCPT", None) => return Err(ParamError::Invalid(key)),
            _ => return Err(ParamError::Unsupported(key)),
        }
    }
    Ok(params)
}

/// `NEVER`, or SUCCESS/FAILURE/DELAY each at most once (RFC 3461 §4.1), uppercased.
fn notify(v: &str) -> Result<String, ParamError> {
    let invalid = || ParamError::Invalid("NOTIFY".into());
    let v = v.to_ascii_uppercase();
    if v == "NEVER" {
        return Ok(v);
    }
    let mut seen = Vec::new();
    for item in v.split(',') {
        if !matches!(item, "SUCCESS" | "FAILURE" | "DELAY") || seen.contains(&item) {
            return Err(invalid());
        }
        seen.push(item);
    }
    Ok(v)
}

/// A `local@domain` without controls or spaces (UTF-8 allowed; whether it was declared is
/// checked separately); anything else is refused here.
fn plausible_address(a: &str) -> bool {
    !a.is_empty()
        && a.len() <= 254
        && a.contains('@')
        && a.chars().all(|c| !c.is_control() && !c.is_whitespace())
}

impl Session {
    pub(super) async fn mail<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Connection<S>,
        from: MailFrom<String>,
        line: &[u8],
    ) -> Flow {
        if self.helo.is_none() {
            return self.error(conn, &reply::BAD_SEQUENCE_HELO).await;
        }
        if self.auth.is_none() {
            let r = if self.auth_allowed() {
                reply::AUTH_REQUIRED
            } else {
                reply::NEEDS_TLS
            };
            return self.error(conn, &r).await;
        }
        if self.mail_from.is_some() {
            return self.error(conn, &reply::BAD_SEQUENCE_NESTED).await;
        }
        if let Some(flow) = self.revalidate(conn).await {
            return flow;
        }
        let Some(auth) = &self.auth else {
            return self.error(conn, &reply::AUTH_REQUIRED).await;
        };
        let Ok(line) = std::str::from_utf8(line) else {
            return self.error(conn, &reply::BAD_SENDER).await;
        };
        let cmd = match parse_mail_params(line) {
            Ok(c) => c,
            Err(e) => return self.error(conn, &Reply::from(&e)).await,
        };
        let max_size = self.message_limits().max_size as u64;
        if cmd.size.is_some_and(|s| s > max_size) {
            return self.error(conn, &reply::TOO_LARGE).await;
        }
        if from.address.is_empty() {
            return self.error(conn, &reply::NULL_SENDER).await;
        }
        if !plausible_address(&from.address) {
            return self.error(conn, &reply::BAD_SENDER).await;
        }
        if !from.address.is_ascii() && !cmd.params.smtputf8 {
            return self.error(conn, &reply::SMTPUTF8_UNDECLARED).await;
        }
        if let Err(e) = sender::check_envelope_sender(&auth.project, &from.address) {
            tracing::warn!(client = %self.peer, project = %auth.project.id, sender = %reply::printable(&from.address), "sender not owned by project");
            return self.error(conn, &Reply::from(&e)).await;
        }
        if self.shared.config.dns.require_verified_domain
            && let Some(domain) = sender::address_domain(&from.address)
            && self
                .shared
                .domain_reports
                .get(&domain)
                .is_some_and(|r| r.verdict == crate::domain_check::Verdict::Failing)
        {
            tracing::warn!(client = %self.peer, project = %auth.project.id, %domain, "sending domain failing its DNS check: refused");
            return self.error(conn, &reply::domain_failing(&domain)).await;
        }
        if let Some(r) = self.check_rate_at_mail().await {
            return self.error(conn, &r).await;
        }
        self.mail_from = Some(from.address);
        self.tx.mail = cmd.params;
        self.send(conn, &reply::SENDER_OK).await
    }

    pub(super) async fn rcpt<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Connection<S>,
        to: RcptTo<String>,
        line: &[u8],
    ) -> Flow {
        if self.mail_from.is_none() {
            return self.error(conn, &reply::BAD_SEQUENCE_MAIL).await;
        }
        let Ok(line) = std::str::from_utf8(line) else {
            return self.error(conn, &reply::BAD_RCPT).await;
        };
        let params = match parse_rcpt_params(line, self.tx.mail.smtputf8) {
            Ok(p) => p,
            Err(e) => return self.error(conn, &Reply::from(&e)).await,
        };
        if !plausible_address(&to.address) {
            return self.error(conn, &reply::BAD_RCPT).await;
        }
        if !to.address.is_ascii() && !self.tx.mail.smtputf8 {
            return self.error(conn, &reply::SMTPUTF8_UNDECLARED).await;
        }
        let refused = &self.shared.config.server.refused_recipient_domains;
        let key = match sender::check_recipient(&to.address, refused) {
            Ok(k) => k,
            Err(e) => {
                tracing::info!(client = %self.peer, project = %self.project_id(), error = %reply::printable(&e.to_string()), "recipient refused");
                return self.error(conn, &Reply::from(&e)).await;
            }
        };
        if self.tx.seen.contains(&key) {
            // Already a recipient: accepted again, delivered once, counted once.
            return self.send(conn, &reply::RCPT_OK).await;
        }
        if let Some(text) = self
            .shared
            .suppression
            .refuse(self.project_id(), &to.address)
            .await
        {
            return self.error(conn, &Reply::owned(550, text)).await;
        }
        if self.rcpts.len() >= self.message_limits().max_recipients {
            return self.error(conn, &reply::TOO_MANY_RCPTS).await;
        }
        if let Some(r) = self.check_rate_at_rcpt(self.rcpts.len() + 1).await {
            return self.error(conn, &r).await;
        }
        self.rcpts.push(to.address);
        self.tx.rcpts.push(params);
        self.tx.seen.insert(key);
        self.send(conn, &reply::RCPT_OK).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn mail(params: &str) -> Result<MailCommand, ParamError> {
        parse_mail_params(&format!("MAIL FROM:<a@b.test>{params}\r\n"))
    }

    fn rcpt(params: &str) -> Result<RcptParams, ParamError> {
        parse_rcpt_params(&format!("RCPT TO:<a@b.test>{params}\r\n"), false)
    }

    #[test]
    fn smtp_proto_gets_the_path_only() {
        let line = b"MAIL FROM:<a@b.test> SIZE=99999999999999999999999 BODY=8BITMIME\r\n";
        assert_eq!(&*without_params(line), b"MAIL FROM:<a@b.test>\r\n");
        let quoted = b"RCPT TO:<\"a>b\"@c.test> NOTIFY=NEVER\r\n";
        assert_eq!(&*without_params(quoted), b"RCPT TO:<\"a>b\"@c.test>\r\n");
        for same in [
            &b"MAIL FROM:<a@b.test>\r\n"[..],
            b"EHLO x\r\n",
            b"MAIL FROM:a@b\r\n",
        ] {
            assert_eq!(&*without_params(same), same);
        }
    }

    #[test]
    fn mail_parameters() {
        assert_eq!(mail(""), Ok(MailCommand::default()));
        let all = mail(" size=10 body=8bitmime SMTPUTF8 RET=hdrs ENVID=QQ+2Bx").unwrap();
        assert_eq!(all.size, Some(10));
        assert_eq!(
            all.params,
            MailParams {
                body_8bitmime: true,
                smtputf8: true,
                ret: Some("HDRS".into()),
                envid: Some("QQ+2Bx".into()),
            }
        );
        assert_eq!(mail(" BODY=7BIT").unwrap().params, MailParams::default());
        assert_eq!(mail(" AUTH=<>").unwrap().params, MailParams::default());
        assert_eq!(
            mail(" SIZE=99999999999999999999999").unwrap().size,
            Some(u64::MAX)
        );
        for invalid in [
            " SIZE=abc",
            " SIZE=",
            " SIZE=-1",
            " SIZE",
            " BODY=9BIT",
            " RET=ALL",
            " ENVID=a+0D+0Ab",
            " ENVID=a+zz",
            " ENVID=a+4",
            " ENVID=ü",
            " SMTPUTF8=yes",
            " =x",
        ] {
            assert!(
                matches!(mail(invalid), Err(ParamError::Invalid(_))),
                "{invalid}"
            );
        }
        let long = format!(" ENVID={}", "x".repeat(101));
        assert!(mail(&long).is_err());
        assert_eq!(
            mail(" SIZE=1 size=2"),
            Err(ParamError::Duplicate("SIZE".into()))
        );
        assert_eq!(
            mail(" BODY=8BITMIME BODY=7BIT"),
            Err(ParamError::Duplicate("BODY".into()))
        );
        for unsupported in [
            " HOLDFOR=10",
            " REQUIRETLS",
            " BY=60;R",
            " X-FOO=1",
            " BODY=BINARYMIME",
        ] {
            assert!(
                matches!(mail(unsupported), Err(ParamError::Unsupported(_))),
                "{unsupported}"
            );
        }
    }

    #[test]
    fn rcpt_parameters() {
        assert_eq!(rcpt(""), Ok(RcptParams::default()));
        let p = rcpt(" notify=success,delay ORCPT=rfc822;a+40b.test").unwrap();
        assert_eq!(p.notify.as_deref(), Some("SUCCESS,DELAY"));
        assert_eq!(p.orcpt.as_deref(), Some("rfc822;a+40b.test"));
        assert_eq!(
            rcpt(" NOTIFY=NEVER").unwrap().notify.as_deref(),
            Some("NEVER")
        );
        for invalid in [
            " NOTIFY=NEVER,SUCCESS",
            " NOTIFY=SUCCESS,SUCCESS",
            " NOTIFY=sometimes",
            " NOTIFY",
            " ORCPT=a@b.test",
            " ORCPT=rfc822;a+0Db",
            " ORCPT=;a",
            " ORCPT=rfc822;jörg@b.test",
        ] {
            assert!(
                matches!(rcpt(invalid), Err(ParamError::Invalid(_))),
                "{invalid}"
            );
        }
        let utf8 = parse_rcpt_params("RCPT TO:<a@b.test> ORCPT=utf-8;jörg@b.test\r\n", true);
        assert!(utf8.is_ok());
        assert_eq!(
            rcpt(" NOTIFY=NEVER NOTIFY=NEVER"),
            Err(ParamError::Duplicate("NOTIFY".into()))
        );
        assert!(matches!(rcpt(" CONNEG"), Err(ParamError::Unsupported(_))));
    }

    proptest! {
        #[test]
        fn parsers_never_panic(params in "[ -~\u{80}-\u{10ffff}]{0,80}") {
            let _ = mail(&format!(" {params}"));
            let _ = rcpt(&format!(" {params}"));
            let _ = without_params(format!("MAIL FROM:<{params}> X\r\n").as_bytes());
        }

        #[test]
        fn any_size_too_large_is_saturated(n in 0u128..u128::MAX) {
            let got = mail(&format!(" SIZE={n}")).unwrap().size.unwrap();
            prop_assert_eq!(u128::from(got), n.min(u128::from(u64::MAX)));
        }

        #[test]
        fn xtext_round_trip(raw in "[\u{20}-\u{7e}]{1,40}") {
            let encoded: String = raw
                .bytes()
                .map(|b| if (0x21..0x7f).contains(&b) && b != b'+' && b != b'=' {
                    (b as char).to_string()
                } else {
                    format!("+{b:02X}")
                })
                .collect();
            prop_assert!(valid_xtext(&encoded, false));
        }
    }
}
