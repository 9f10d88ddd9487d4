//! Prometheus metrics: one registry for the process, and the one-line helpers the stages
//! call (`metrics::accepted(project)`, `metrics::rejected(project, &reply)`, …).
//!
//! The registry is a process-wide static so that a stage records an event with one call and
//! no handle threaded through its types; nothing here ever fails or blocks the caller.
//! Rejections are classified from the reply the client gets (DESIGN.md's reply table), so a
//! new refusal that uses those codes is counted under the right reason without new wiring.
//! Queue depth and oldest age are read from the queue when the endpoint is scraped
//! ([`http`]), not tracked incrementally, so they cannot drift.

pub mod http;

use std::sync::LazyLock;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::inbound::reply::Reply;
use crate::queue::{Envelope, MessageState, now_ms};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProjectLabels {
    project: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectLabels {
    project: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    project: String,
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DomainLabels {
    domain: String,
    check: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

type LatencyFamily = Family<UpstreamLabels, Histogram, fn() -> Histogram>;

/// Acceptance → upstream `250`: from well under a second (idle queue) to the retry horizon.
const LATENCY_BUCKETS: [f64; 14] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

struct Metrics {
    registry: Registry,
    accepted: Family<ProjectLabels, Counter>,
    rejected: Family<RejectLabels, Counter>,
    delivered: Family<RouteLabels, Counter>,
    deferred: Family<RouteLabels, Counter>,
    failed: Family<RouteLabels, Counter>,
    expired: Family<RouteLabels, Counter>,
    latency: LatencyFamily,
    queue_depth: Gauge,
    queue_oldest: Gauge<f64, AtomicU64>,
    in_flight: Gauge,
    connections: Gauge,
    tls_handshakes: Counter,
    tls_failures: Counter,
    rate_limited: Family<ProjectLabels, Counter>,
    auth_failures: Counter,
    reloads: Family<ResultLabels, Counter>,
    domain_verified: Family<DomainLabels, Gauge>,
    events: Family<TypeLabels, Counter>,
    suppressions_added: Family<SourceLabels, Counter>,
    suppressed: Family<ProjectLabels, Counter>,
    pruned: Family<TreeLabels, Counter>,
    bounces: Counter,
    webhook_deliveries: Family<ResultLabels, Counter>,
    webhook_disabled: Counter,
    tls_cert_expiry: Gauge,
    upstream_success: Family<UpstreamLabels, Gauge>,
    upstream_error: Family<UpstreamLabels, Gauge>,
    store_failed: Gauge,
    store_free: Gauge,
    cluster_degraded: Gauge,
}

/// `notAfter` of the serving certificate (epoch s); the expiry gauge is computed from it at
/// each scrape so it never goes stale. `i64::MIN`: none loaded.
static TLS_NOT_AFTER: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(i64::MIN);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TreeLabels {
    tree: &'static str,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("smtp_relay");
        let m = Metrics {
            registry: Registry::default(),
            accepted: Family::default(),
            rejected: Family::default(),
            delivered: Family::default(),
            deferred: Family::default(),
            failed: Family::default(),
            expired: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            queue_depth: Gauge::default(),
            queue_oldest: Gauge::default(),
            in_flight: Gauge::default(),
            connections: Gauge::default(),
            tls_handshakes: Counter::default(),
            tls_failures: Counter::default(),
            rate_limited: Family::default(),
            auth_failures: Counter::default(),
            reloads: Family::default(),
            events: Family::default(),
            suppressions_added: Family::default(),
            suppressed: Family::default(),
            pruned: Family::default(),
            bounces: Counter::default(),
            webhook_deliveries: Family::default(),
            webhook_disabled: Counter::default(),
            tls_cert_expiry: Gauge::default(),
            upstream_success: Family::default(),
            upstream_error: Family::default(),
            store_failed: Gauge::default(),
            store_free: Gauge::default(),
            cluster_degraded: Gauge::default(),
            domain_verified: Family::default(),
        };
        registry.register(
            "cluster_degraded",
            "1 while this cluster node cannot reach Redis (local fallback limits), else 0",
            m.cluster_degraded.clone(),
        );
        registry.register(
            "domain_verified",
            "Last periodic DNS check of a sending domain, per check (dkim, spf, dmarc, all): 1 passes, 0 does not, -1 could not be checked",
            m.domain_verified.clone(),
        );
        // prometheus-client appends `_total` to counters and the unit to the name.
        registry.register(
            "messages_accepted",
            "Messages accepted with 250 (stored durably)",
            m.accepted.clone(),
        );
        registry.register(
            "rejections",
            "Commands refused, by reason: auth, sender, suppressed, limit, size, syntax, local",
            m.rejected.clone(),
        );
        registry.register(
            "messages_delivered",
            "Messages the upstream accepted (all or some recipients)",
            m.delivered.clone(),
        );
        registry.register(
            "messages_deferred",
            "Delivery attempts that left recipients to retry",
            m.deferred.clone(),
        );
        registry.register(
            "messages_failed",
            "Messages refused permanently by the upstream",
            m.failed.clone(),
        );
        registry.register(
            "messages_expired",
            "Messages given up after their maximum age",
            m.expired.clone(),
        );
        registry.register_with_unit(
            "delivery_latency",
            "Time from acceptance to the upstream's 250",
            Unit::Seconds,
            m.latency.clone(),
        );
        registry.register(
            "queue_depth",
            "Messages waiting for delivery (scheduled or in flight)",
            m.queue_depth.clone(),
        );
        registry.register_with_unit(
            "queue_oldest_message_age",
            "Age of the oldest message still in the queue",
            Unit::Seconds,
            m.queue_oldest.clone(),
        );
        registry.register(
            "deliveries_in_flight",
            "Delivery attempts running now",
            m.in_flight.clone(),
        );
        registry.register(
            "active_connections",
            "Client connections open now",
            m.connections.clone(),
        );
        registry.register(
            "tls_handshakes",
            "TLS handshakes completed with clients",
            m.tls_handshakes.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes with clients that failed or timed out",
            m.tls_failures.clone(),
        );
        registry.register(
            "rate_limit_hits",
            "Submissions refused by a project's rate limit or quota",
            m.rate_limited.clone(),
        );
        registry.register(
            "auth_failures",
            "Failed AUTH attempts",
            m.auth_failures.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration reloads (SIGHUP), by result",
            m.reloads.clone(),
        );
        registry.register(
            "events",
            "Delivery events recorded, by type",
            m.events.clone(),
        );
        registry.register(
            "suppressions_added",
            "Recipients put on a suppression list, by source: upstream (permanent refusal), admin",
            m.suppressions_added.clone(),
        );
        registry.register(
            "suppressed_recipients",
            "Recipients refused at RCPT or by the send API because they are suppressed",
            m.suppressed.clone(),
        );
        registry.register(
            "retention_pruned_records",
            "Records removed by the retention prune, by tree: log, events, webhook_attempts, suppression",
            m.pruned.clone(),
        );
        registry.register(
            "bounces_queued",
            "Delivery status notifications (bounces) queued to envelope senders",
            m.bounces.clone(),
        );
        registry.register(
            "webhook_deliveries",
            "Webhook delivery attempts, by result: delivered, retry, failed (given up), gone (410)",
            m.webhook_deliveries.clone(),
        );
        registry.register(
            "webhook_endpoints_disabled",
            "Webhook endpoints disabled (410 Gone, or failing for disable_after_secs)",
            m.webhook_disabled.clone(),
        );
        registry.register_with_unit(
            "tls_cert_expiry",
            "Time until the serving TLS certificate expires (negative once expired); the relay warns below 14 days",
            Unit::Seconds,
            m.tls_cert_expiry.clone(),
        );
        registry.register_with_unit(
            "upstream_last_success_timestamp",
            "When the upstream last accepted a message (epoch seconds; absent: not since start)",
            Unit::Seconds,
            m.upstream_success.clone(),
        );
        registry.register_with_unit(
            "upstream_last_error_timestamp",
            "When an attempt over the upstream last delivered nothing (epoch seconds; absent: not since start)",
            Unit::Seconds,
            m.upstream_error.clone(),
        );
        registry.register(
            "store_failed",
            "1 once the database hit an I/O error or a flush slower than 30 s (the relay then exits for a restart)",
            m.store_failed.clone(),
        );
        registry.register_with_unit(
            "store_free_space",
            "Free space on the state directory's filesystem",
            Unit::Bytes,
            m.store_free.clone(),
        );
        Metrics { registry, ..m }
    }
}

/// Why a reply refuses something, for the `reason` label; `None` for replies that are not
/// refusals of the client's request (success, temporary auth trouble, shutdown).
pub fn reject_reason(reply: &Reply) -> Option<&'static str> {
    let enhanced = reply.text.split(' ').next().unwrap_or("");
    Some(match (reply.code, enhanced) {
        (c, _) if c < 400 => return None,
        (530 | 535, _) => "auth",
        (553, _) | (550, "5.7.1") => "sender",
        // The only 5.1.1 inbound gives: a recipient on the suppression list.
        (550, "5.1.1") => "suppressed",
        (552, _) => "size",
        (451, "4.7.1") | (452, "4.5.3") | (421, "4.7.0") => "limit",
        (451 | 452, _) => "local",
        (454, _) | (421, _) => return None,
        (500..=504 | 550 | 554 | 555, _) => "syntax",
        _ => "other",
    })
}

/// A message was stored and answered with `250`.
pub fn accepted(project: &str) {
    crate::health::project_outcome(project, crate::health::Outcome::Accepted);
    METRICS
        .accepted
        .get_or_create(&ProjectLabels {
            project: project.to_string(),
        })
        .inc();
}

/// A reply refused the client's request. `project` is empty before AUTH.
pub fn rejected(project: &str, reply: &Reply) {
    let Some(reason) = reject_reason(reply) else {
        return;
    };
    METRICS
        .rejected
        .get_or_create(&RejectLabels {
            project: project.to_string(),
            reason,
        })
        .inc();
    if reply.code == 451 && reply.text.starts_with("4.7.1") {
        rate_limit_hit(project);
    }
}

/// A project's rate limit or quota refused a submission. [`rejected`] calls this for the
/// `451 4.7.1` reply, so a limiter that answers through the session's error path needs no
/// call of its own.
pub fn rate_limit_hit(project: &str) {
    METRICS
        .rate_limited
        .get_or_create(&ProjectLabels {
            project: project.to_string(),
        })
        .inc();
}

pub fn auth_failure() {
    METRICS.auth_failures.inc();
}

pub fn tls_handshake(ok: bool) {
    if ok {
        METRICS.tls_handshakes.inc();
    } else {
        METRICS.tls_failures.inc();
    }
}

/// Keeps `active_connections` up while alive.
#[must_use]
pub struct ConnectionGuard(());

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        METRICS.connections.dec();
    }
}

pub fn connection_opened() -> ConnectionGuard {
    METRICS.connections.inc();
    ConnectionGuard(())
}

/// Keeps `deliveries_in_flight` up while alive.
#[must_use]
pub struct DeliveryGuard(());

impl Drop for DeliveryGuard {
    fn drop(&mut self) {
        METRICS.in_flight.dec();
    }
}

pub fn delivery_started() -> DeliveryGuard {
    METRICS.in_flight.inc();
    DeliveryGuard(())
}

/// Records where a delivery attempt left the message (`env.state` after the attempt).
pub fn delivery_outcome(env: &Envelope, upstream: &str) {
    let labels = RouteLabels {
        project: env.project.clone(),
        upstream: upstream.to_string(),
    };
    let family = match env.state {
        MessageState::Delivered => {
            let secs = now_ms().saturating_sub(env.received_ms) as f64 / 1000.0;
            METRICS
                .latency
                .get_or_create(&UpstreamLabels {
                    upstream: upstream.to_string(),
                })
                .observe(secs);
            &METRICS.delivered
        }
        MessageState::Queued | MessageState::Deferred => &METRICS.deferred,
        MessageState::Failed => &METRICS.failed,
        MessageState::Expired => &METRICS.expired,
        MessageState::Deleted => return,
    };
    family.get_or_create(&labels).inc();
    use crate::health::{Outcome, project_outcome};
    match env.state {
        MessageState::Delivered => project_outcome(&env.project, Outcome::Relayed),
        MessageState::Queued | MessageState::Deferred => {
            project_outcome(&env.project, Outcome::Deferred)
        }
        MessageState::Failed | MessageState::Expired => {
            project_outcome(&env.project, Outcome::Failed)
        }
        MessageState::Deleted => {}
    }
}

/// One attempt over `upstream` (the router calls this per upstream tried): `ok` when it
/// accepted some recipients, else `reply` says why not. Feeds the last-success/last-error
/// gauges and `smtp-relay status`.
pub fn upstream_attempt(upstream: &str, ok: bool, reply: &str) {
    crate::health::upstream_attempt(upstream, ok, reply);
    let family = if ok {
        &METRICS.upstream_success
    } else {
        &METRICS.upstream_error
    };
    family
        .get_or_create(&UpstreamLabels {
            upstream: upstream.to_string(),
        })
        .set((now_ms() / 1000) as i64);
}

/// The serving certificate's `notAfter` (epoch seconds), at startup and after each reload.
pub fn tls_certificate(not_after: i64) {
    TLS_NOT_AFTER.store(not_after, std::sync::atomic::Ordering::Relaxed);
    refresh_tls_expiry();
}

fn refresh_tls_expiry() {
    let not_after = TLS_NOT_AFTER.load(std::sync::atomic::Ordering::Relaxed);
    if not_after != i64::MIN {
        METRICS
            .tls_cert_expiry
            .set(not_after - (now_ms() / 1000) as i64);
    }
}

/// The store's health at scrape time: failed flag and free bytes (`None`: unknown).
pub fn set_store(failed: bool, free_bytes: Option<u64>) {
    METRICS.store_failed.set(i64::from(failed));
    if let Some(free) = free_bytes {
        METRICS.store_free.set(free.min(i64::MAX as u64) as i64);
    }
}

/// Delivery attempts running now.
pub fn deliveries_in_flight() -> u64 {
    METRICS.in_flight.get().max(0) as u64
}

pub fn event_recorded(kind: &'static str) {
    METRICS.events.get_or_create(&TypeLabels { kind }).inc();
}

/// `result`: delivered, retry, failed, gone.
pub fn webhook_delivery(result: &'static str) {
    METRICS
        .webhook_deliveries
        .get_or_create(&ResultLabels { result })
        .inc();
}

/// `source`: upstream, admin.
pub fn suppression_added(source: &'static str) {
    METRICS
        .suppressions_added
        .get_or_create(&SourceLabels { source })
        .inc();
}

pub fn recipient_suppressed(project: &str) {
    METRICS
        .suppressed
        .get_or_create(&ProjectLabels {
            project: project.to_string(),
        })
        .inc();
}

pub fn retention_pruned(tree: &'static str, count: usize) {
    METRICS
        .pruned
        .get_or_create(&TreeLabels { tree })
        .inc_by(count as u64);
}

pub fn bounce_queued() {
    METRICS.bounces.inc();
}

pub fn webhook_endpoint_disabled() {
    METRICS.webhook_disabled.inc();
}

pub fn config_reload(ok: bool) {
    METRICS
        .reloads
        .get_or_create(&ResultLabels {
            result: if ok { "ok" } else { "refused" },
        })
        .inc();
}

/// Sets the queue gauges. `scheduled` excludes attempts in flight, which are added here.
/// Cluster mode: whether Redis is out of reach (`cluster/`).
pub fn cluster_degraded(degraded: bool) {
    METRICS.cluster_degraded.set(i64::from(degraded));
}

pub fn set_queue(scheduled: u64, oldest_received_ms: Option<u64>) {
    let in_flight = METRICS.in_flight.get().max(0) as u64;
    METRICS
        .queue_depth
        .set((scheduled + in_flight).min(i64::MAX as u64) as i64);
    let age = oldest_received_ms
        .map(|t| now_ms().saturating_sub(t) as f64 / 1000.0)
        .unwrap_or(0.0);
    METRICS.queue_oldest.set(age);
}

/// The result of one check of a sending domain (see `domain_check`): 1, 0 or -1.
pub fn domain_verified(domain: &str, check: &'static str, value: i64) {
    METRICS
        .domain_verified
        .get_or_create(&DomainLabels {
            domain: domain.to_string(),
            check,
        })
        .set(value);
}

/// The OpenMetrics text exposition of every metric.
pub fn encode() -> String {
    refresh_tls_expiry();
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &METRICS.registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inbound::reply;

    #[test]
    fn replies_map_to_reasons() {
        let cases = [
            (reply::AUTH_REQUIRED, Some("auth")),
            (reply::NEEDS_TLS, Some("auth")),
            (reply::BAD_CREDENTIALS, Some("auth")),
            (reply::NULL_SENDER, Some("sender")),
            (
                Reply::new(550, "5.7.1 header From not owned"),
                Some("sender"),
            ),
            (reply::TOO_LARGE, Some("size")),
            (reply::TOO_MANY_RCPTS, Some("limit")),
            (
                Reply::new(451, "4.7.1 Rate limit exceeded for project p, retry in 3 s"),
                Some("limit"),
            ),
            (reply::TOO_MANY_CONNECTIONS, Some("limit")),
            (reply::BARE_LF, Some("syntax")),
            (reply::LINE_TOO_LONG, Some("syntax")),
            (reply::BAD_SEQUENCE_MAIL, Some("syntax")),
            (reply::NO_STORAGE, Some("local")),
            (reply::LOCAL_ERROR, Some("local")),
            (reply::AUTH_TEMP, None),
            (reply::TIMEOUT, None),
            (reply::OK, None),
        ];
        for (r, want) in cases {
            assert_eq!(reject_reason(&r), want, "{r:?}");
        }
    }

    #[test]
    fn names_follow_prometheus_conventions() {
        accepted("prj_unit");
        let text = encode();
        for name in [
            "smtp_relay_messages_accepted_total{project=\"prj_unit\"}",
            "# TYPE smtp_relay_queue_oldest_message_age_seconds gauge",
            "# TYPE smtp_relay_auth_failures counter",
            "# EOF",
        ] {
            assert!(text.contains(name), "{name} missing in\n{text}");
        }
    }
}
