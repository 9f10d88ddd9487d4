//! The message log: the latest state of every message, per project, newest first.
//!
//! Written by the queue (accepted) and by delivery (each attempt's outcome); read by the CLI.
//! Keys are message ids, which start with the acceptance time, so iteration is chronological.

use crate::queue::spool::{Envelope, QueueError, decode};
use crate::store::Store;

#[derive(Clone, Debug)]
pub struct MessageLog {
    store: Store,
}

impl MessageLog {
    pub fn new(store: Store) -> MessageLog {
        MessageLog { store }
    }

    pub fn get(&self, id: &str) -> Result<Option<Envelope>, QueueError> {
        match self.store.log.get(id.as_bytes())? {
            Some(v) => Ok(Some(decode(&v)?)),
            None => Ok(None),
        }
    }

    /// Newest first, optionally for one project.
    pub fn recent(&self, project: Option<&str>, limit: usize) -> Result<Vec<Envelope>, QueueError> {
        let mut out = Vec::new();
        for item in self.store.log.iter().rev() {
            let (_, v) = item?;
            let env: Envelope = decode(&v)?;
            if project.is_none_or(|p| env.project == p) {
                out.push(env);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }
}
