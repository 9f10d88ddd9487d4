//! DATA: receive the message, check it, pass it through transform, and queue it.
//!
//! The `250` goes out only after the queue says the message is on disk. If storing fails the
//! client gets a 4xx and keeps the message — never a `250` for something we might lose.
//! The message counts against the project's rate windows just before it is queued.
//! Everything after the bytes are in is `submit.rs`, shared with the HTTP send API.

use tokio::io::{AsyncRead, AsyncWrite};

use super::connection::{Connection, DataOutcome};
use super::reply::{self, Reply};
use super::session::{Flow, Session};
use super::submit::{self, Refusal, Submission, Submitter};

impl Session {
    pub(super) async fn data<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Connection<S>,
    ) -> Flow {
        // Only the id until the message is in: the project itself is moved into submit (no
        // copy of it per message).
        let Some(project_id) = self.auth.as_ref().map(|a| a.project.id.clone()) else {
            return self.error(conn, &reply::AUTH_REQUIRED).await;
        };
        let Some(mail_from) = self.mail_from.clone() else {
            return self.error(conn, &reply::BAD_SEQUENCE_MAIL).await;
        };
        if self.rcpts.is_empty() {
            return self.error(conn, &reply::BAD_SEQUENCE_RCPT).await;
        }
        if conn.write_reply(&reply::START_DATA).await.is_err() {
            return Flow::Close;
        }
        let idle = self.shared.config.data_timeout();
        let max_size = self.message_limits().max_size;
        let queue = self.shared.queue.clone();
        let spill = move || queue.spill_file(max_size);
        let outcome = conn
            .read_data_spilling(max_size, idle, idle * 4, Some(&spill))
            .await;
        let body = match outcome {
            Ok(DataOutcome::Message(b)) => b,
            Ok(DataOutcome::NotStored(e)) => {
                self.reset_transaction();
                tracing::error!(client = %self.peer, project = %project_id, error = %e, "cannot spool a large message");
                let r = Reply::from(&e);
                crate::metrics::rejected(&project_id, &r);
                return self.send(conn, &r).await;
            }
            Ok(DataOutcome::TooLarge) => {
                self.reset_transaction();
                return self.error(conn, &reply::TOO_LARGE).await;
            }
            Ok(DataOutcome::LineTooLong) => {
                self.reset_transaction();
                return self.error(conn, &reply::LINE_TOO_LONG).await;
            }
            Err(e) => {
                tracing::warn!(client = %self.peer, project = %project_id, error = %e, "DATA aborted");
                if let Some(r) = e.reply() {
                    crate::metrics::rejected(&project_id, &r);
                    let _ = conn.write_reply(&r).await;
                }
                return Flow::Close;
            }
        };
        let rcpts = std::mem::take(&mut self.rcpts);
        let tx = std::mem::take(&mut self.tx);
        self.reset_transaction();

        // Held until the message is queued: a large one is in memory only under it.
        let size = body.len();
        let memory = match self.shared.memory.reserve(size, idle).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(client = %self.peer, project = %project_id, error = %e, "large message refused");
                crate::metrics::rejected(&project_id, &reply::MEMORY_BUSY);
                return self.send(conn, &reply::MEMORY_BUSY).await;
            }
        };
        let message = match body.into_vec().await {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(client = %self.peer, project = %project_id, error = %e, "cannot read back a spooled message");
                return self.send(conn, &reply::LOCAL_ERROR).await;
            }
        };

        let helo = self.helo.clone().unwrap_or_default();
        let Some(mut auth) = self.auth.take() else {
            return self.error(conn, &reply::AUTH_REQUIRED).await;
        };
        let result = submit::submit(
            Submitter {
                shared: &self.shared,
                auth: &mut auth,
                registry_generation: &mut self.registry_generation,
                quota: self.quota.as_ref(),
                peer: self.peer,
                helo: &helo,
                tls: self.tls,
            },
            Submission {
                mail_from,
                mail_params: tx.mail,
                recipients: rcpts,
                rcpt_params: tx.rcpts,
                message,
                memory,
                idempotency: None,
            },
        )
        .await;
        // Back, with the project as the re-check may have refreshed it (domains, limits).
        self.auth = Some(auth);
        match result {
            Ok(accepted) => {
                self.accepted += 1;
                self.message_ids.push(accepted.id.clone());
                self.send(conn, &reply::queued(&accepted.id)).await
            }
            Err(Refusal::Withdrawn(why)) => self.withdrawn(conn, why).await,
            Err(e @ (Refusal::TooManyHops(_) | Refusal::Sender(_) | Refusal::Rate(_))) => {
                self.error(conn, &Reply::from(&e)).await
            }
            Err(e @ Refusal::Storage(_)) => {
                let r = Reply::from(&e);
                crate::metrics::rejected(&project_id, &r);
                self.send(conn, &r).await
            }
            Err(
                e @ (Refusal::Branding(_)
                | Refusal::Transform(_)
                | Refusal::Registry(_)
                | Refusal::Idempotency(_)),
            ) => self.send(conn, &Reply::from(&e)).await,
        }
    }
}
