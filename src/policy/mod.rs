//! Policy answers a session's questions: who is this token (`projects`, `tokens`), may this
//! project send as this address (`sender`), may it send this much, this fast (`limits`), and
//! may this client address go on at all (`throttle`).
//! It owns the project registry and knows nothing about sockets or upstreams.

pub mod limits;
pub mod projects;
pub mod sender;
pub mod throttle;
pub mod tokens;
