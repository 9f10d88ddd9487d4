//! How fast the per-project limiter answers, with 10,000 projects loaded.
//!
//! Run: `cargo bench --bench limiter` (optionally `-- <ops>` for the number of operations per
//! figure). Prints operations per second for the checks a session makes: MAIL FROM's check
//! (nothing consumed), DATA's acquire (all windows at once, the long windows written to sled in one record, as
//! in the server — not flushed: the message's own flush covers them), the accept-and-delay
//! reservation, and AUTH's open_session (reads the project's override from sled). Every
//! project has all five windows, so each decision asks governor five times.

use std::hint::black_box;
use std::time::Instant;

use smtp_relay::config::{LimitMode, LimitsConfig};
use smtp_relay::policy::limits::{Cost, Decision, Defaults, Limiter, MessageLimits};
use smtp_relay::store::Store;

const PROJECTS: usize = 10_000;

fn report(what: &str, ops: usize, started: Instant) {
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{what:<44} {:>12.0} ops/s  {:>8.0} ns/op  ({ops} ops, {PROJECTS} projects)",
        ops as f64 / secs,
        secs * 1e9 / ops as f64
    );
}

fn main() {
    let ops: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    let defaults = Defaults {
        limits: LimitsConfig {
            per_second: Some(1_000),
            burst: Some(2_000),
            per_minute: Some(10_000),
            per_hour: Some(100_000),
            per_day: Some(1_000_000),
            recipients_per_day: Some(2_000_000),
            max_connections: Some(50),
            mode: LimitMode::Reject,
        },
        message: MessageLimits {
            max_size: 25 << 20,
            max_recipients: 100,
        },
    };
    let limiter = Limiter::new(store.clone(), defaults);
    let projects: Vec<String> = (0..PROJECTS).map(|i| format!("prj_{i:010}")).collect();

    let t = Instant::now();
    for p in &projects {
        black_box(limiter.check(p, Cost::message(1)).expect("check"));
    }
    report("first check (loads the project)", PROJECTS, t);

    let t = Instant::now();
    for i in 0..ops {
        let p = &projects[i % PROJECTS];
        black_box(limiter.check(p, Cost::message(1)).expect("check"));
    }
    report("check at MAIL FROM (1 thread)", ops, t);

    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let t = Instant::now();
    std::thread::scope(|s| {
        for k in 0..threads {
            let limiter = limiter.clone();
            let projects = &projects;
            s.spawn(move || {
                for i in 0..ops / threads {
                    let p = &projects[(i * 7 + k * 13) % PROJECTS];
                    black_box(limiter.check(p, Cost::message(1)).expect("check"));
                }
            });
        }
    });
    report(
        &format!("check at MAIL FROM ({threads} threads)"),
        ops / threads * threads,
        t,
    );

    // Consumes; sized so that no project runs out (stays within every window).
    let acquires = ops.min(PROJECTS * 1_000);
    let t = Instant::now();
    let mut allowed = 0usize;
    for i in 0..acquires {
        let p = &projects[i % PROJECTS];
        if limiter.acquire(p, Cost::message(1)).expect("acquire") == Decision::Allowed {
            allowed += 1;
        }
    }
    report("acquire at DATA (+1 sled write)", acquires, t);
    assert_eq!(
        allowed, acquires,
        "the benchmark should stay within the limits"
    );

    let t = Instant::now();
    for i in 0..acquires {
        let p = &projects[i % PROJECTS];
        black_box(
            limiter
                .preview_slot(p, Cost::message(1), u64::MAX)
                .expect("slot"),
        );
    }
    report("accept-and-delay slot preview", acquires, t);

    let sessions = ops.min(200_000);
    let t = Instant::now();
    for i in 0..sessions {
        let p = &projects[i % PROJECTS];
        drop(black_box(limiter.open_session(p).expect("session")));
    }
    report("open_session at AUTH (reads sled)", sessions, t);
}
