//! SMTP toward an upstream provider, with mail-send.
//!
//! Certificate verification is always on (public web roots, or the configured CA file).
//! Every step has its own deadline: mail-send's defaults (one hour, and no greeting timeout on
//! plain connections) are never relied on. MAIL/RCPT/DATA are driven one by one so every
//! recipient gets its own result, and the body is dot-stuffed here rather than by mail-send,
//! which misses a dot at the very start of the message.

use std::sync::Arc;
use std::time::Duration;

use mail_send::{Credentials, SmtpClient, SmtpClientBuilder};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use smtp_proto::Response;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_rustls::TlsConnector;

use super::{Attempt, RcptOutcome};
use crate::config::{UpstreamAuth, UpstreamConfig, UpstreamTls};
use crate::secret::{Secret, read_credential};

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream {name}: cannot read CA file {path}: {message}")]
    CaFile {
        name: String,
        path: String,
        message: String,
    },
    #[error("upstream {name}: {message}")]
    Credential { name: String, message: String },
    #[error("upstream {name}: TLS setup failed: {message}")]
    Tls { name: String, message: String },
}

pub struct SmtpUpstream {
    pub name: String,
    host: String,
    port: u16,
    tls: UpstreamTls,
    helo: String,
    credentials: Option<(String, Secret)>,
    connector: TlsConnector,
    connect_timeout: Duration,
    command_timeout: Duration,
    data_timeout: Duration,
}

impl std::fmt::Debug for SmtpUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpUpstream")
            .field("name", &self.name)
            .field("host", &self.host)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

pub fn tls_connector(
    name: &str,
    ca_file: Option<&std::path::Path>,
) -> Result<TlsConnector, UpstreamError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let fail = |message: String| UpstreamError::CaFile {
                name: name.to_string(),
                path: path.display().to_string(),
                message,
            };
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| fail(e.to_string()))?;
            if certs.is_empty() {
                return Err(fail("no PEM certificate in file".into()));
            }
            for c in certs {
                roots.add(c).map_err(|e| fail(e.to_string()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = rustls::ClientConfig::builder_with_provider(crate::inbound::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| UpstreamError::Tls {
            name: name.to_string(),
            message: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// `250 2.0.0 text` from a parsed reply.
fn reply_text(r: &Response<String>) -> String {
    let text = r.message.replace(['\r', '\n'], " ");
    if r.esc[0] != 0 {
        format!("{} {}.{}.{} {}", r.code, r.esc[0], r.esc[1], r.esc[2], text)
    } else {
        format!("{} {}", r.code, text)
    }
}

fn classify(r: &Response<String>) -> RcptOutcome {
    let text = reply_text(r);
    match r.code {
        200..=299 => RcptOutcome::Delivered(text),
        500..=599 => RcptOutcome::Failed(text),
        _ => RcptOutcome::Deferred(text),
    }
}

fn describe(e: &mail_send::Error) -> String {
    match e {
        mail_send::Error::UnexpectedReply(r) | mail_send::Error::AuthenticationFailed(r) => {
            reply_text(r)
        }
        mail_send::Error::Io(e) => format!("connection error: {e}"),
        mail_send::Error::Tls(e) => format!("TLS error: {e}"),
        mail_send::Error::Timeout => "timeout".into(),
        mail_send::Error::MissingStartTls => "upstream does not offer STARTTLS".into(),
        mail_send::Error::UnsupportedAuthMechanism => {
            "upstream offers no supported AUTH mechanism".into()
        }
        other => format!("{other:?}"),
    }
}

/// Dot-stuffs a CRLF-only message and appends the terminator.
pub fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 64 + 5);
    let mut at_line_start = true;
    for &b in message {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !message.is_empty() && !message.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

impl SmtpUpstream {
    pub fn new(
        name: &str,
        cfg: &UpstreamConfig,
        default_helo: &str,
    ) -> Result<SmtpUpstream, UpstreamError> {
        let tls = cfg.tls.unwrap_or(UpstreamTls::Starttls);
        let credentials = match cfg.auth.unwrap_or(UpstreamAuth::None) {
            UpstreamAuth::None => None,
            UpstreamAuth::Plain | UpstreamAuth::Login => {
                let secret =
                    read_credential(cfg.password_file.as_deref(), cfg.password_env.as_deref())
                        .map_err(|e| UpstreamError::Credential {
                            name: name.to_string(),
                            message: e.to_string(),
                        })?;
                Some((cfg.username.clone().unwrap_or_default(), secret))
            }
        };
        Ok(SmtpUpstream {
            name: name.to_string(),
            host: cfg.host.clone().unwrap_or_default(),
            port: cfg.port.unwrap_or(587),
            tls,
            helo: cfg
                .helo_name
                .clone()
                .unwrap_or_else(|| default_helo.to_string()),
            credentials,
            connector: tls_connector(name, cfg.ca_file.as_deref())?,
            connect_timeout: Duration::from_secs(cfg.connect_timeout_secs),
            command_timeout: Duration::from_secs(cfg.command_timeout_secs),
            data_timeout: Duration::from_secs(cfg.data_timeout_secs),
        })
    }

    fn builder(&self) -> SmtpClientBuilder<String> {
        let mut b = SmtpClientBuilder::new_with_tls_connector(
            self.host.clone(),
            self.port,
            self.connector.clone(),
        )
        .implicit_tls(self.tls == UpstreamTls::Implicit)
        .helo_host(self.helo.clone())
        .timeout(self.command_timeout);
        if let Some((user, secret)) = &self.credentials {
            b = b.credentials(Credentials::new(user.clone(), secret.expose().to_string()));
        }
        b
    }

    /// One delivery attempt of `message` to `rcpts`.
    pub async fn deliver(&self, mail_from: &str, rcpts: &[String], message: &[u8]) -> Attempt {
        let builder = self.builder();
        // Connect, TLS, greeting, EHLO and AUTH together get connect + command timeouts.
        let setup = self.connect_timeout + self.command_timeout;
        match self.tls {
            UpstreamTls::None => match tokio::time::timeout(setup, builder.connect_plain()).await {
                Ok(Ok(mut client)) => {
                    self.transaction(&mut client, mail_from, rcpts, message)
                        .await
                }
                Ok(Err(e)) => Attempt::all(rcpts.len(), RcptOutcome::Deferred(describe(&e))),
                Err(_) => Attempt::all(
                    rcpts.len(),
                    RcptOutcome::Deferred("timeout connecting".into()),
                ),
            },
            UpstreamTls::Starttls | UpstreamTls::Implicit => {
                match tokio::time::timeout(setup, builder.connect()).await {
                    Ok(Ok(mut client)) => {
                        self.transaction(&mut client, mail_from, rcpts, message)
                            .await
                    }
                    Ok(Err(e)) => Attempt::all(rcpts.len(), RcptOutcome::Deferred(describe(&e))),
                    Err(_) => Attempt::all(
                        rcpts.len(),
                        RcptOutcome::Deferred("timeout connecting".into()),
                    ),
                }
            }
        }
    }

    async fn command<T: AsyncRead + AsyncWrite + Unpin>(
        &self,
        client: &mut SmtpClient<T>,
        line: String,
    ) -> Result<Response<String>, String> {
        match tokio::time::timeout(self.command_timeout, client.cmd(line.as_bytes())).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(describe(&e)),
            Err(_) => Err("timeout".into()),
        }
    }

    async fn transaction<T: AsyncRead + AsyncWrite + Unpin>(
        &self,
        client: &mut SmtpClient<T>,
        mail_from: &str,
        rcpts: &[String],
        message: &[u8],
    ) -> Attempt {
        let n = rcpts.len();
        let r = match self
            .command(client, format!("MAIL FROM:<{mail_from}>\r\n"))
            .await
        {
            Ok(r) => r,
            Err(e) => return Attempt::all(n, RcptOutcome::Deferred(e)),
        };
        if r.code != 250 {
            let outcome = classify(&r);
            return Attempt::all(n, outcome);
        }
        let mut outcomes = Vec::with_capacity(n);
        for rcpt in rcpts {
            match self.command(client, format!("RCPT TO:<{rcpt}>\r\n")).await {
                Ok(r) => outcomes.push(match r.code {
                    250 | 251 => RcptOutcome::Delivered(reply_text(&r)),
                    _ => classify(&r),
                }),
                Err(e) => {
                    // The connection is gone: this and all remaining recipients wait.
                    outcomes.resize(n, RcptOutcome::Deferred(e.clone()));
                    return Attempt {
                        outcomes,
                        summary: e,
                    };
                }
            }
        }
        let accepted: Vec<usize> = outcomes
            .iter()
            .enumerate()
            .filter(|(_, o)| matches!(o, RcptOutcome::Delivered(_)))
            .map(|(i, _)| i)
            .collect();
        if accepted.is_empty() {
            let _ = self.command(client, "RSET\r\n".into()).await;
            let summary = outcomes
                .last()
                .map(|o| o.reply().to_string())
                .unwrap_or_default();
            return Attempt { outcomes, summary };
        }
        // Accepted recipients are only delivered once DATA is accepted.
        let data_result: RcptOutcome = match self.command(client, "DATA\r\n".into()).await {
            Ok(r) if r.code == 354 => {
                let stuffed = dot_stuff(message);
                let io = async {
                    client.stream.write_all(&stuffed).await?;
                    client.stream.flush().await
                };
                match tokio::time::timeout(self.data_timeout, io).await {
                    Ok(Ok(())) => {
                        match tokio::time::timeout(self.data_timeout, client.read()).await {
                            Ok(Ok(r)) => classify(&r),
                            Ok(Err(e)) => RcptOutcome::Deferred(describe(&e)),
                            Err(_) => {
                                RcptOutcome::Deferred("timeout waiting for DATA reply".into())
                            }
                        }
                    }
                    Ok(Err(e)) => RcptOutcome::Deferred(format!("connection error: {e}")),
                    Err(_) => RcptOutcome::Deferred("timeout sending DATA".into()),
                }
            }
            Ok(r) => classify(&r),
            Err(e) => RcptOutcome::Deferred(e),
        };
        for i in accepted {
            outcomes[i] = data_result.clone();
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), client.cmd(b"QUIT\r\n")).await;
        Attempt {
            summary: data_result.reply().to_string(),
            outcomes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stuffing() {
        assert_eq!(dot_stuff(b".a\r\nb\r\n..\r\n"), b"..a\r\nb\r\n...\r\n.\r\n");
        assert_eq!(dot_stuff(b""), b".\r\n");
    }
}
