//! The sandbox: where a sandbox project's mail goes instead of the delivery queue.
//!
//! Staging and development use real credentials without mailing real people: their mail takes
//! the whole acceptance path (auth, limits, branding, DKIM) and is then captured here — kept
//! per project, the newest `sandbox.max_messages`, the oldest dropped — to be looked at
//! (`sandbox list|show`, `.eml`), cleared, or released to its real recipients one message at a
//! time (then it enters the queue with the same id, bytes and envelope as captured). It sits
//! beside the queue because it is the queue's alternative hand-off point: a capture is
//! acknowledged with `250` only once it is durable, like an enqueue.
//!
//! Keys: `m ‖ project \0 id ‖ 'e'` → envelope (JSON), `m ‖ project \0 id ‖ 'b'` → bytes,
//! `i ‖ id` → project (find a message by id alone). Ids start with their acceptance time,
//! so a project's entries scan oldest first. Writes go bytes → envelope → index, removals
//! index → envelope → bytes: a listed envelope always has its bytes. Bodies over
//! `memory_budget::SPILL_THRESHOLD` are not kept in sled (it holds large values in memory, as
//! the spool found): they are `<state_dir>/sandbox/<id>`, written and fsync'd before sled is
//! written, with an empty `… ‖ 'f'` marker instead of `'b'`, and unlinked after their keys are
//! removed; [`Sandbox::recover`] removes files no index names (a crash between the two).

use base64::Engine;
use serde_json::{Value, json};

use crate::queue::spool::{Envelope, NewMessage, decode};
use crate::queue::{Queue, QueueError};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("no captured message {0} in the sandbox")]
    NotFound(String),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

impl From<sled::Error> for SandboxError {
    fn from(e: sled::Error) -> Self {
        SandboxError::Queue(QueueError::Store(StoreError::Sled(e)))
    }
}

impl From<StoreError> for SandboxError {
    fn from(e: StoreError) -> Self {
        SandboxError::Queue(QueueError::Store(e))
    }
}

#[derive(Clone, Debug)]
pub struct Sandbox {
    store: Store,
    queue: Queue,
}

fn prefix(project: &str) -> Vec<u8> {
    let mut k = vec![b'm'];
    k.extend_from_slice(project.as_bytes());
    k.push(0);
    k
}

fn entry_key(project: &str, id: &str, kind: u8) -> Vec<u8> {
    let mut k = prefix(project);
    k.extend_from_slice(id.as_bytes());
    k.push(kind);
    k
}

fn index_key(id: &str) -> Vec<u8> {
    let mut k = vec![b'i'];
    k.extend_from_slice(id.as_bytes());
    k
}

/// A captured message as listed: no bytes, the subject for recognising it.
pub fn summary_json(env: &Envelope, subject: Option<String>) -> Value {
    json!({
        "id": env.id,
        "project": env.project,
        "from": env.mail_from,
        "recipients": env.recipients.iter().map(|r| r.address.clone()).collect::<Vec<_>>(),
        "subject": subject,
        "size": env.size,
        "received_ms": env.received_ms,
        "message_id": env.header_message_id,
    })
}

fn subject_of(bytes: &[u8]) -> Option<String> {
    let msg = mail_parser::MessageParser::new().parse_headers(bytes)?;
    msg.subject()
        .map(|s| s.chars().filter(|c| !c.is_control()).collect())
}

impl Sandbox {
    pub fn new(store: Store, queue: Queue) -> Sandbox {
        Sandbox { store, queue }
    }

    /// Keeps a message of a sandbox project; returns only once it is durable (the `250`).
    /// `also` runs after the message's writes and before the flush (the idempotency record).
    /// Beyond `keep` messages for the project, the oldest are dropped.
    pub async fn capture(
        &self,
        msg: NewMessage,
        bytes: &[u8],
        keep: usize,
        also: impl FnOnce() -> Result<(), sled::Error>,
    ) -> Result<Envelope, SandboxError> {
        self.store.check_healthy()?;
        self.queue.ensure_space(bytes.len())?;
        let env = self.queue.envelope_for(msg, bytes);
        let in_file = crate::memory_budget::MemoryBudget::is_large(bytes.len());
        if in_file {
            let path = self.body_path(&env.id);
            if let Err(e) = crate::run_blocking(|| {
                crate::queue::spool::write_durable(&self.bodies_dir(), &path, bytes)
            }) {
                let _ = std::fs::remove_file(&path);
                return Err(SandboxError::Queue(QueueError::Spill(e)));
            }
        }
        let t = &self.store.sandbox;
        let written = (|| {
            if in_file {
                t.insert(entry_key(&env.project, &env.id, b'f'), &[])?;
            } else {
                t.insert(entry_key(&env.project, &env.id, b'b'), bytes)?;
            }
            t.insert(
                entry_key(&env.project, &env.id, b'e'),
                serde_json::to_vec(&env).unwrap_or_default(),
            )?;
            t.insert(index_key(&env.id), env.project.as_bytes())?;
            also()?;
            self.trim(&env.project, keep.max(1))
        })();
        if let Err(e) = written {
            self.store.note_error(&e);
            if in_file {
                let _ = std::fs::remove_file(self.body_path(&env.id));
            }
            return Err(e.into());
        }
        self.store.durable().await?;
        Ok(env)
    }

    fn bodies_dir(&self) -> std::path::PathBuf {
        self.store.state_dir().join("sandbox")
    }

    fn body_path(&self, id: &str) -> std::path::PathBuf {
        self.bodies_dir().join(id)
    }

    /// At start: removes body files that no capture names (written just before a crash that
    /// lost their keys — the client got no `250` — or left by a removal cut short).
    pub fn recover(&self) -> Result<usize, QueueError> {
        let mut removed = 0;
        if let Ok(entries) = std::fs::read_dir(self.bodies_dir()) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                if self.store.sandbox.get(index_key(&name))?.is_none() {
                    let _ = std::fs::remove_file(entry.path());
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Drops the oldest captures of `project` beyond `keep`.
    fn trim(&self, project: &str, keep: usize) -> Result<(), sled::Error> {
        let ids = self.ids(project)?;
        if ids.len() > keep {
            for id in &ids[..ids.len() - keep] {
                self.remove(project, id)?;
            }
        }
        Ok(())
    }

    /// The ids captured for `project`, oldest first.
    fn ids(&self, project: &str) -> Result<Vec<String>, sled::Error> {
        let p = prefix(project);
        let mut out = Vec::new();
        for k in self.store.sandbox.scan_prefix(&p).keys() {
            let k = k?;
            if k.last() == Some(&b'e') {
                out.push(String::from_utf8_lossy(&k[p.len()..k.len() - 1]).to_string());
            }
        }
        Ok(out)
    }

    fn remove(&self, project: &str, id: &str) -> Result<(), sled::Error> {
        self.store.sandbox.remove(index_key(id))?;
        self.store.sandbox.remove(entry_key(project, id, b'e'))?;
        self.store.sandbox.remove(entry_key(project, id, b'b'))?;
        if self
            .store
            .sandbox
            .remove(entry_key(project, id, b'f'))?
            .is_some()
        {
            // Best effort: a leftover is removed by the next `recover`.
            let _ = std::fs::remove_file(self.body_path(id));
        }
        Ok(())
    }

    fn project_of(&self, id: &str) -> Result<String, SandboxError> {
        match self.store.sandbox.get(index_key(id))? {
            Some(p) => Ok(String::from_utf8_lossy(&p).to_string()),
            None => Err(SandboxError::NotFound(id.to_string())),
        }
    }

    /// A project's captures, newest first, at most `limit`.
    pub fn list(&self, project: &str, limit: usize) -> Result<Vec<Value>, SandboxError> {
        let mut out = Vec::new();
        for id in self.ids(project)?.iter().rev().take(limit) {
            let (env, bytes) = self.get(id)?;
            out.push(summary_json(&env, subject_of(&bytes)));
        }
        Ok(out)
    }

    /// One capture: its envelope and bytes.
    pub fn get(&self, id: &str) -> Result<(Envelope, Vec<u8>), SandboxError> {
        let project = self.project_of(id)?;
        let env = self
            .store
            .sandbox
            .get(entry_key(&project, id, b'e'))?
            .ok_or_else(|| SandboxError::NotFound(id.to_string()))?;
        let bytes = match self.store.sandbox.get(entry_key(&project, id, b'b'))? {
            Some(b) => b.to_vec(),
            None if self
                .store
                .sandbox
                .contains_key(entry_key(&project, id, b'f'))? =>
            {
                std::fs::read(self.body_path(id)).map_err(QueueError::Spill)?
            }
            None => return Err(SandboxError::NotFound(id.to_string())),
        };
        Ok((decode(&env)?, bytes))
    }

    /// One capture as shown to admins: the summary and the message text.
    pub fn show(&self, id: &str) -> Result<Value, SandboxError> {
        let (env, bytes) = self.get(id)?;
        let mut v = summary_json(&env, subject_of(&bytes));
        // Text for reading; base64 for the exact bytes (.eml downloads, 8-bit bodies).
        v["eml"] = Value::String(String::from_utf8_lossy(&bytes).to_string());
        v["eml_base64"] = Value::String(base64::engine::general_purpose::STANDARD.encode(&bytes));
        Ok(v)
    }

    /// Sends a capture to its real recipients: it enters the queue (same id, bytes, envelope;
    /// a fresh maximum age) and leaves the sandbox. A crash between the two leaves it in both;
    /// releasing it again would queue it a second time under the same id.
    pub async fn release(&self, id: &str, max_age_secs: u64) -> Result<Envelope, SandboxError> {
        let (env, bytes) = self.get(id)?;
        let msg = NewMessage {
            id: env.id.clone(),
            project: env.project.clone(),
            mail_from: env.mail_from.clone(),
            mail_params: env.mail_params.clone(),
            recipients: env.recipients.iter().map(|r| r.address.clone()).collect(),
            rcpt_params: env.recipients.iter().map(|r| r.params.clone()).collect(),
            client_ip: env.client_ip.clone(),
            max_age_secs,
            not_before_ms: None,
            // The header fields are taken again from the bytes when it is queued.
            summary: crate::queue::summary::MessageSummary {
                subject: env.summary.subject.clone(),
                from: env.summary.from.clone(),
                ..Default::default()
            },
        };
        let queued = self.queue.enqueue(msg, &bytes).await?;
        self.remove(&env.project, id)?;
        self.store.flush_now()?;
        tracing::info!(id, project = %env.project, "sandbox message released to its recipients");
        Ok(queued)
    }

    /// Drops every capture of `project`; returns how many.
    pub fn clear(&self, project: &str) -> Result<usize, SandboxError> {
        let ids = self.ids(project)?;
        for id in &ids {
            self.remove(project, id)?;
        }
        self.store.flush_now()?;
        Ok(ids.len())
    }

    /// How many captures `project` has.
    pub fn count(&self, project: &str) -> Result<usize, SandboxError> {
        Ok(self.ids(project)?.len())
    }
}
