//! Per-message limits that do not depend on time: message size and recipient count.
//!
//! Time-based quotas (rate limits) will live here too; they are a separate issue.

use crate::config::Config;

#[derive(Debug, Clone, Copy)]
pub struct MessageLimits {
    pub max_size: usize,
    pub max_recipients: usize,
}

impl MessageLimits {
    pub fn from_config(c: &Config) -> MessageLimits {
        MessageLimits {
            max_size: c.server.max_message_size,
            max_recipients: c.server.max_recipients,
        }
    }
}
