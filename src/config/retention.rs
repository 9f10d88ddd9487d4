//! `[suppression]` and `[retention]`: how long the relay remembers recipients it must not send
//! to, and how long it keeps the history of what it did (message log, events, webhook
//! attempts). Kept apart from `config.rs` because they belong together: both bound what the
//! database accumulates over time.

use serde::{Deserialize, Serialize};

/// One day, the unit a sysadmin thinks in; the keys are in seconds like the rest of the file.
const DAY: u64 = 86_400;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuppressionConfig {
    /// How long an entry stays on a project's suppression list after it was added.
    #[serde(default = "d_expire")]
    pub expire_secs: u64,
}

impl Default for SuppressionConfig {
    fn default() -> Self {
        SuppressionConfig {
            expire_secs: d_expire(),
        }
    }
}

fn d_expire() -> u64 {
    30 * DAY
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Finished messages in the message log, delivery events and webhook attempts older than
    /// this are removed.
    #[serde(default = "d_max_age")]
    pub max_age_secs: u64,
    /// How often the server prunes (and expired suppression entries go).
    #[serde(default = "d_interval")]
    pub prune_interval_secs: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            max_age_secs: d_max_age(),
            prune_interval_secs: d_interval(),
        }
    }
}

fn d_max_age() -> u64 {
    30 * DAY
}
fn d_interval() -> u64 {
    3600
}

/// The first problem found, as `(table, key, message)` for `config_invalid`.
pub fn validate(
    s: &SuppressionConfig,
    r: &RetentionConfig,
) -> Result<(), (&'static str, &'static str, String)> {
    if !(1..=3650 * DAY).contains(&s.expire_secs) {
        return Err((
            "suppression",
            "expire_secs",
            "must be between 1 second and 3650 days (315360000)".into(),
        ));
    }
    // No floor beyond 1 s: a message still queued keeps its history whatever its age.
    if !(1..=3650 * DAY).contains(&r.max_age_secs) {
        return Err((
            "retention",
            "max_age_secs",
            "must be between 1 second and 3650 days (315360000)".into(),
        ));
    }
    if !(1..=DAY).contains(&r.prune_interval_secs) {
        return Err((
            "retention",
            "prune_interval_secs",
            "must be between 1 second and one day (86400)".into(),
        ));
    }
    Ok(())
}
