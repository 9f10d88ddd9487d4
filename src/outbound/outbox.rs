//! The `outbox` upstream: "delivers" a message by writing `<id>.eml` (the exact bytes) and
//! `<id>.json` (the envelope) into a directory, so the relay works with no mail server.
//! Files are written to a temporary name, fsync'd, then renamed: a reader never sees half.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{Attempt, RcptOutcome};
use crate::queue::Envelope;

#[derive(Debug, Clone)]
pub struct Outbox {
    pub dir: PathBuf,
}

fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))
}

impl Outbox {
    pub fn deliver(&self, env: &Envelope, rcpts: &[String], bytes: &[u8]) -> Attempt {
        let result = (|| -> std::io::Result<()> {
            std::fs::create_dir_all(&self.dir)?;
            let meta = serde_json::json!({
                "id": env.id,
                "project": env.project,
                "mail_from": env.mail_from,
                "rcpt_to": rcpts,
            });
            write_atomic(&self.dir, &format!("{}.eml", env.id), bytes)?;
            write_atomic(
                &self.dir,
                &format!("{}.json", env.id),
                meta.to_string().as_bytes(),
            )
        })();
        match result {
            Ok(()) => Attempt::all(
                rcpts.len(),
                RcptOutcome::Delivered(format!("250 2.0.0 written to {}", self.dir.display())),
            ),
            Err(e) => Attempt::all(
                rcpts.len(),
                RcptOutcome::Deferred(format!("451 4.3.0 outbox write failed: {e}")),
            ),
        }
    }
}
