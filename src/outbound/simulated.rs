//! Delivery for simulated recipients (`policy::simulated`): `delivered@`, `bounced@` and
//! `deferred@` any name under `smtp-relay.test` get the outcome their name says, recorded
//! like an upstream's answer (message log, delivery events, webhooks) with the upstream named
//! `simulated` — and no upstream is contacted for them. The other recipients of the same
//! message go over the project's route as usual.

use super::routing::{RouteOutcome, Router};
use super::{Attempt, RcptOutcome};
use crate::policy::simulated::{self, Simulated};
use crate::queue::Envelope;

/// The name recorded as the upstream of simulated outcomes.
pub const UPSTREAM: &str = "simulated";

fn outcome(s: Simulated) -> RcptOutcome {
    let reply = s.reply().to_string();
    match s {
        Simulated::Delivered => RcptOutcome::Delivered(reply),
        Simulated::Bounced => RcptOutcome::Failed(reply),
        Simulated::Deferred => RcptOutcome::Deferred(reply),
    }
}

/// [`Router::deliver`], answering simulated recipients here.
pub async fn deliver(
    router: &Router,
    env: &Envelope,
    rcpts: &[String],
    bytes: &[u8],
) -> RouteOutcome {
    let sim: Vec<Option<Simulated>> = rcpts.iter().map(|r| simulated::outcome(r)).collect();
    if sim.iter().all(Option::is_none) {
        return router.deliver(env, rcpts, bytes).await;
    }
    let real: Vec<String> = rcpts
        .iter()
        .zip(&sim)
        .filter(|(_, s)| s.is_none())
        .map(|(r, _)| r.clone())
        .collect();
    let routed = if real.is_empty() {
        None
    } else {
        let r = router.deliver(env, &real, bytes).await;
        if !r.attempted && r.retry_at_ms.is_some() {
            // The route is resting: the whole message waits, simulated recipients included.
            return r;
        }
        Some(r)
    };
    let mut from_route = routed
        .as_ref()
        .map(|r| r.attempt.outcomes.clone())
        .unwrap_or_default()
        .into_iter();
    let outcomes: Vec<RcptOutcome> = sim
        .iter()
        .map(|s| match s {
            Some(s) => outcome(*s),
            None => from_route
                .next()
                .unwrap_or_else(|| RcptOutcome::Deferred("451 4.3.0 no outcome".into())),
        })
        .collect();
    match routed {
        Some(mut r) => {
            r.attempt.outcomes = outcomes;
            r
        }
        None => RouteOutcome {
            upstream: Some(UPSTREAM.to_string()),
            attempt: Attempt {
                summary: outcomes
                    .first()
                    .map(|o| o.reply().to_string())
                    .unwrap_or_default(),
                outcomes,
            },
            attempted: true,
            retry_at_ms: None,
            path: vec![format!("{UPSTREAM}: no upstream contacted")],
        },
    }
}
