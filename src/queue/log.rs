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

/// Which log entries a search wants; every field that is set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<crate::queue::MessageState>,
    /// Part of a recipient address (case-insensitive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    /// Part of the envelope sender or of the header From (case-insensitive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    /// Accepted at or after this time (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<u64>,
    /// Accepted before this time (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<u64>,
    /// Free text: part of the subject, the header From, the sender, a recipient or the id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

impl LogFilter {
    fn matches(&self, e: &Envelope) -> bool {
        let has = |hay: &str, needle: &str| hay.to_lowercase().contains(needle);
        if self.project.as_ref().is_some_and(|p| &e.project != p)
            || self.state.is_some_and(|s| e.state != s)
            || self.since_ms.is_some_and(|t| e.received_ms < t)
            || self.until_ms.is_some_and(|t| e.received_ms >= t)
        {
            return false;
        }
        if let Some(r) = &self.recipient {
            let r = r.to_lowercase();
            if !e.recipients.iter().any(|x| has(&x.address, &r)) {
                return false;
            }
        }
        if let Some(s) = &self.sender {
            let s = s.to_lowercase();
            if !has(&e.mail_from, &s) && !e.summary.from.as_deref().is_some_and(|f| has(f, &s)) {
                return false;
            }
        }
        if let Some(t) = &self.text {
            let t = t.to_lowercase();
            if !(e.summary.mentions(&t)
                || has(&e.mail_from, &t)
                || has(&e.id, &t)
                || e.recipients.iter().any(|x| has(&x.address, &t)))
            {
                return false;
            }
        }
        true
    }
}

/// One page of a search, newest first.
#[derive(Debug, Clone)]
pub struct LogPage {
    pub messages: Vec<Envelope>,
    /// The id of the last message on this page when there are more (the next page starts
    /// after it); `None` on the last page.
    pub next_after: Option<String>,
}

/// Entries examined per search at most, so one search of a huge log cannot hold a worker long;
/// a page cut short by it still has a `next_after` to go on from.
const MAX_SCAN: usize = 100_000;

impl MessageLog {
    /// Messages matching `filter`, newest first, starting after the message id `after`.
    pub fn search(
        &self,
        filter: &LogFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<LogPage, QueueError> {
        // Ids start with the acceptance time in hex, so the time range bounds the scan.
        let mut upper: Vec<u8> = match filter.until_ms {
            Some(t) => format!("{:012x}", t & 0xffff_ffff_ffff).into_bytes(),
            None => vec![0xff],
        };
        if let Some(a) = after
            && a.as_bytes() < upper.as_slice()
        {
            upper = a.as_bytes().to_vec();
        }
        let lower = filter
            .since_ms
            .map(|t| format!("{:012x}", t & 0xffff_ffff_ffff).into_bytes())
            .unwrap_or_default();
        let mut messages = Vec::new();
        let mut last_seen = None;
        for (scanned, item) in self.store.log.range(lower..upper).rev().enumerate() {
            let (k, v) = item?;
            if scanned >= MAX_SCAN {
                return Ok(LogPage {
                    messages,
                    next_after: last_seen,
                });
            }
            last_seen = Some(String::from_utf8_lossy(&k).into_owned());
            let env: Envelope = decode(&v)?;
            if !filter.matches(&env) {
                continue;
            }
            if messages.len() == limit {
                let next_after = messages.last().map(|m: &Envelope| m.id.clone());
                return Ok(LogPage {
                    messages,
                    next_after,
                });
            }
            messages.push(env);
        }
        Ok(LogPage {
            messages,
            next_after: None,
        })
    }
}
