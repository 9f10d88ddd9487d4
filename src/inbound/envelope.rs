//! MAIL FROM and RCPT TO: who may start a transaction, and with which addresses.
//!
//! Nothing is accepted before AUTH. The sender must belong to the authenticated project
//! (policy decides); recipients are counted against the per-message limit. Both commands also
//! ask whether the project's rate windows have room (`quota.rs`); neither consumes any.

use smtp_proto::{MailFrom, RcptTo};
use tokio::io::{AsyncRead, AsyncWrite};

use super::connection::Connection;
use super::reply::{self, Reply};
use super::session::{Flow, Session};
use crate::policy::sender;

/// A plain ASCII `local@domain` without controls or spaces; anything else is refused here.
fn plausible_address(a: &str) -> bool {
    !a.is_empty() && a.len() <= 254 && a.contains('@') && a.bytes().all(|b| b.is_ascii_graphic())
}

impl Session {
    pub(super) async fn mail<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Connection<S>,
        from: MailFrom<String>,
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
        if from.flags & smtp_proto::MAIL_SMTPUTF8 != 0 {
            return self.error(conn, &reply::SMTPUTF8_UNSUPPORTED).await;
        }
        if from.size > self.message_limits().max_size {
            return self.error(conn, &reply::TOO_LARGE).await;
        }
        if from.address.is_empty() {
            return self.error(conn, &reply::NULL_SENDER).await;
        }
        if !plausible_address(&from.address) {
            return self
                .error(conn, &Reply::new(501, "5.1.7 Bad sender address syntax"))
                .await;
        }
        if let Err(e) = sender::check_envelope_sender(&auth.project, &from.address) {
            tracing::warn!(client = %self.peer, project = %auth.project.id, sender = %reply::printable(&from.address), "sender not owned by project");
            return self.error(conn, &Reply::from(&e)).await;
        }
        if let Some(r) = self.check_rate_at_mail() {
            return self.error(conn, &r).await;
        }
        self.mail_from = Some(from.address);
        self.send(conn, &reply::SENDER_OK).await
    }

    pub(super) async fn rcpt<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Connection<S>,
        to: RcptTo<String>,
    ) -> Flow {
        if self.mail_from.is_none() {
            return self.error(conn, &reply::BAD_SEQUENCE_MAIL).await;
        }
        if !plausible_address(&to.address) {
            return self.error(conn, &reply::BAD_RCPT).await;
        }
        if self.rcpts.len() >= self.message_limits().max_recipients {
            return self.error(conn, &reply::TOO_MANY_RCPTS).await;
        }
        if let Some(r) = self.check_rate_at_rcpt(self.rcpts.len() + 1) {
            return self.error(conn, &r).await;
        }
        self.rcpts.push(to.address);
        self.send(conn, &reply::RCPT_OK).await
    }
}
