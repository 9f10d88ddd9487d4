//! Policy answers a session's questions: who is this token (`projects`, `tokens`), may this
//! project send as this address (`sender`), may it send this much, this fast (`limits`), may
//! this client address go on at all (`throttle`), which named upstreams does its mail go to
//! (`routes`), is this recipient suppressed (`suppression`). It owns the project registry and knows nothing about sockets or how upstreams
//! are reached.

pub mod admin_tokens;
pub mod idempotency;
pub mod limits;
pub mod projects;
pub mod routes;
pub mod sender;
pub mod simulated;
pub mod suppression;
pub mod throttle;
pub mod tokens;
