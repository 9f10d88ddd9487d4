//! The panel's HTML (maud). Every value that came from a client, a message or an upstream is
//! inserted as text, which maud escapes; no page carries a script, and buttons that change
//! anything are only drawn for admin sessions (the guard refuses viewers anyway).

use maud::{DOCTYPE, Markup, html};
use serde_json::Value;

use super::session::{Notice, Reveal, Session};

/// What every page of a logged-in session needs.
pub struct Ctx<'a> {
    pub session: &'a Session,
    pub notice: Option<Notice>,
    /// The nav entry to highlight.
    pub path: &'a str,
}

/// `id` as one URL path segment.
pub fn path_part(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub(super) fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// Milliseconds since the epoch as `YYYY-MM-DD HH:MM:SS` (UTC).
pub(super) fn when_ms(ms: &Value) -> String {
    match ms.as_u64() {
        Some(ms) if ms > 0 => when_secs(ms / 1000),
        _ => "—".into(),
    }
}

pub(super) fn when_secs(secs: u64) -> String {
    let dt = mail_parser::DateTime::from_timestamp(secs as i64);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        dt.year, dt.month, dt.day, dt.hour, dt.minute, dt.second
    )
}

/// Seconds since the epoch as `YYYY-MM-DD` (UTC).
pub(super) fn day(secs: u64) -> String {
    when_secs(secs).chars().take(10).collect()
}

fn duration(secs: u64) -> String {
    match secs {
        s if s % 86400 == 0 => format!("{} d", s / 86400),
        s if s % 3600 == 0 => format!("{} h", s / 3600),
        s if s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

pub(super) fn csrf(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf); }
}

pub(super) fn state_badge(state: &str) -> Markup {
    let class = match state {
        "delivered" => "badge ok",
        "queued" | "deferred" => "badge wait",
        "failed" | "expired" => "badge bad",
        _ => "badge",
    };
    html! { span class=(class) { (state) } }
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            meta name="referrer" content="no-referrer";
            title { (title) " · smtp-relay" }
            link rel="stylesheet" href="/static/panel.css";
            link rel="icon" href="/static/favicon.svg" type="image/svg+xml";
        }
    }
}

pub(super) fn layout(ctx: Ctx<'_>, title: &str, body: Markup) -> Markup {
    let nav = [
        ("/", "Overview"),
        ("/projects", "Projects"),
        ("/messages", "Messages"),
        ("/branding", "Branding"),
        ("/dkim", "DKIM"),
        ("/send-test", "Send test"),
        ("/admin-tokens", "Admin tokens"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header class="top" {
                    a class="brand" href="/" { span class="logo" { "✉" } "smtp-relay" }
                    nav {
                        @for (href, name) in nav {
                            a href=(href) class=[(ctx.path == href).then_some("active")] { (name) }
                        }
                    }
                    div class="who" {
                        span { (ctx.session.label) }
                        span class={ "badge " (if ctx.session.is_admin() { "admin" } else { "viewer" }) } {
                            (ctx.session.role.as_str())
                        }
                        form method="post" action="/logout" {
                            (csrf(ctx.session))
                            button class="link" type="submit" { "Log out" }
                        }
                    }
                }
                main {
                    @if let Some(n) = &ctx.notice {
                        div class={ "notice " (if n.error { "error" } else { "ok" }) } role="status" { (n.text) }
                    }
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

pub fn error_page(title: &str, text: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body class="center" {
                div class="card narrow" {
                    h1 { (title) }
                    p { (text) }
                    p { a href="/" { "Back to the panel" } }
                }
            }
        }
    }
}

pub fn login(error: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head("Log in"))
            body class="center" {
                div class="card narrow login" {
                    div class="brand big" { span class="logo" { "✉" } "smtp-relay" }
                    p class="muted" { "Paste an admin token to manage projects and messages." }
                    @if let Some(e) = error {
                        div class="notice error" role="alert" { (e) }
                    }
                    form method="post" action="/login" {
                        label for="token" { "Admin token" }
                        input id="token" name="token" type="password" autocomplete="off"
                            placeholder="smtpa_…" required autofocus;
                        button class="primary" type="submit" { "Log in" }
                    }
                    p class="hint" {
                        "Create one on the server with "
                        code { "smtp-relay admin token add --label you --role admin" }
                        ". Sessions end after a while, on logout, and when the server restarts."
                    }
                }
            }
        }
    }
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// A stacked bar (relayed / deferred / failed) for one project, drawn server-side.
fn bar(c: (u64, u64, u64), max: u64) -> Markup {
    let total = c.0 + c.1 + c.2;
    let width = 240.0;
    let scale = if max == 0 { 0.0 } else { width / max as f64 };
    let (w0, w1, w2) = (c.0 as f64 * scale, c.1 as f64 * scale, c.2 as f64 * scale);
    html! {
        svg class="bar" width="240" height="14" viewBox="0 0 240 14" role="img"
            aria-label={ (c.0) " relayed, " (c.1) " deferred, " (c.2) " failed" } {
            rect x="0" y="0" width="240" height="14" rx="3" fill="#eef1f5" {}
            @if total > 0 {
                rect x="0" y="0" width=(format!("{w0:.1}")) height="14" fill="#2f9e6e" {}
                rect x=(format!("{w0:.1}")) y="0" width=(format!("{w1:.1}")) height="14" fill="#e0a526" {}
                rect x=(format!("{:.1}", w0 + w1)) y="0" width=(format!("{w2:.1}")) height="14" fill="#d64545" {}
            }
        }
    }
}

/// The last hours as stacked columns (relayed, deferred, failed) with the accepted count as
/// a line: an SVG drawn on the server, no script.
fn chart(hourly: &[Value]) -> Markup {
    let (w, h, left, bottom) = (960.0, 220.0, 40.0, 24.0);
    let plot_h = h - bottom - 10.0;
    let max = hourly
        .iter()
        .map(|b| (n(&b["relayed"]) + n(&b["deferred"]) + n(&b["failed"])).max(n(&b["accepted"])))
        .max()
        .unwrap_or(0)
        .max(1);
    let step = (w - left) / hourly.len().max(1) as f64;
    let bw = (step * 0.7).max(1.0);
    let y = |v: u64| 10.0 + plot_h - v as f64 / max as f64 * plot_h;
    let line: Vec<String> = hourly
        .iter()
        .enumerate()
        .map(|(i, b)| {
            format!(
                "{:.1},{:.1}",
                left + step * i as f64 + step / 2.0,
                y(n(&b["accepted"]))
            )
        })
        .collect();
    html! {
        svg class="chart" viewBox=(format!("0 0 {w} {h}")) role="img" aria-label="Messages per hour" {
            @for frac in [0.0, 0.5, 1.0] {
                @let v = (max as f64 * frac).round() as u64;
                line x1=(left) x2=(w) y1=(format!("{:.1}", y(v))) y2=(format!("{:.1}", y(v))) stroke="#e4e8ee" {}
                text x=(left - 6.0) y=(format!("{:.1}", y(v) + 4.0)) text-anchor="end" font-size="11" fill="#667085" { (v) }
            }
            @for (i, b) in hourly.iter().enumerate() {
                @let x = left + step * i as f64 + (step - bw) / 2.0;
                @let (r, d, f) = (n(&b["relayed"]), n(&b["deferred"]), n(&b["failed"]));
                @let hr = r as f64 / max as f64 * plot_h;
                @let hd = d as f64 / max as f64 * plot_h;
                @let hf = f as f64 / max as f64 * plot_h;
                @let base = 10.0 + plot_h;
                g {
                    title { (when_ms(&b["start_ms"])) " UTC: " (n(&b["accepted"])) " accepted, " (r) " relayed, " (d) " deferred, " (f) " failed" }
                    rect x=(format!("{x:.1}")) y=(format!("{:.1}", base - hr)) width=(format!("{bw:.1}")) height=(format!("{hr:.1}")) fill="#2f9e6e" {}
                    rect x=(format!("{x:.1}")) y=(format!("{:.1}", base - hr - hd)) width=(format!("{bw:.1}")) height=(format!("{hd:.1}")) fill="#e0a526" {}
                    rect x=(format!("{x:.1}")) y=(format!("{:.1}", base - hr - hd - hf)) width=(format!("{bw:.1}")) height=(format!("{hf:.1}")) fill="#d64545" {}
                }
                @if i % 3 == 0 {
                    text x=(format!("{:.1}", x + bw / 2.0)) y=(h - 6.0) text-anchor="middle" font-size="11" fill="#667085" {
                        (when_ms(&b["start_ms"]).get(11..16).unwrap_or(""))
                    }
                }
            }
            polyline points=(line.join(" ")) fill="none" stroke="#3056d3" stroke-width="2" {}
        }
    }
}

fn ago(ms: &Value, now_ms: u64) -> String {
    match ms.as_u64() {
        Some(t) => {
            let secs = now_ms.saturating_sub(t) / 1000;
            match secs {
                s if s < 60 => format!("{s} s ago"),
                s if s < 3600 => format!("{} min ago", s / 60),
                s if s < 86400 => format!("{} h ago", s / 3600),
                s => format!("{} d ago", s / 86400),
            }
        }
        None => "—".into(),
    }
}

pub fn overview(ctx: Ctx<'_>, projects: &[Value], stats: &Value, cluster: &Value) -> Markup {
    let overall = &stats["overall"];
    let now = n(&stats["window"]["until_ms"]);
    let rows: Vec<&Value> = stats["projects"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let max = rows
        .iter()
        .map(|p| n(&p["relayed"]) + n(&p["deferred"]) + n(&p["failed"]))
        .max()
        .unwrap_or(0);
    let enabled: std::collections::HashMap<&str, &Value> =
        projects.iter().map(|p| (s(&p["id"]), p)).collect();
    let hourly = stats["hourly"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    html! {
        (layout(ctx, "Overview", html! {
            div class="stats five" {
                div class="stat" { span class="num" { (n(&overall["accepted"])) } span { "accepted, 24 h" } }
                div class="stat" { span class="num" { (n(&overall["relayed"])) } span { "relayed" } }
                div class="stat" { span class="num" { (n(&overall["deferred"])) } span { "deferred" } }
                div class="stat" { span class="num" { (n(&overall["failed"])) } span { "failed" } }
                div class="stat" { span class="num" { (n(&stats["queue"]["depth"])) } span {
                    "in the queue"
                    @if let Some(a) = stats["queue"]["oldest_age_secs"].as_u64() { " · oldest " (duration_rough(a)) }
                } }
            }
            div class="card" {
                h2 { "Last 24 hours" span class="muted small" { " — messages per hour (UTC)" } }
                (chart(hourly))
                p class="legend small muted" {
                    span class="dot ok" {} "relayed " span class="dot wait" {} "deferred " span class="dot bad" {} "failed "
                    span class="dot line" {} "accepted"
                }
            }
            div class="card" {
                h2 { "Projects" span class="muted small" { " — the last 24 hours" } }
                @if rows.is_empty() {
                    p class="empty" { "No projects yet. " a href="/projects" { "Create the first one." } }
                } @else {
                    table {
                        thead { tr { th { "Project" } th { "Status" } th class="num" { "Accepted" } th class="num" { "Relayed" }
                            th class="num" { "Deferred" } th class="num" { "Failed" } th class="num" { "Rate-limited" } th { "" } } }
                        tbody {
                            @for p in &rows {
                                tr {
                                    td { a href={ "/projects/" (path_part(s(&p["project"]))) } { (p["name"].as_str().unwrap_or("(deleted)")) }
                                        div class="muted small mono" { (s(&p["project"])) } }
                                    td { @if let Some(pr) = enabled.get(s(&p["project"])) { (enabled_badge(pr)) } @else { span class="badge" { "deleted" } } }
                                    td class="num" { (n(&p["accepted"])) }
                                    td class="num" { (n(&p["relayed"])) }
                                    td class="num" { (n(&p["deferred"])) }
                                    td class="num" { (n(&p["failed"])) }
                                    td class="num" { (n(&p["rate_limited"])) }
                                    td { (bar((n(&p["relayed"]), n(&p["deferred"]), n(&p["failed"])), max)) }
                                }
                            }
                        }
                    }
                }
            }
            @if cluster["clustered"] == true { (cluster_card(cluster)) }
            div class="card" {
                h2 { "Upstreams" }
                table {
                    thead { tr { th { "Upstream" } th { "State" } th { "Last success" } th { "Last error" } th { "" } } }
                    tbody {
                        @for u in stats["upstreams"].as_array().into_iter().flatten() {
                            tr {
                                td class="mono" { (s(&u["name"])) }
                                td { @match s(&u["state"]) {
                                    "ok" => span class="badge ok" { "ok" },
                                    "throttled" => span class="badge wait" { "throttled" },
                                    "failing" => span class="badge bad" { "failing" },
                                    other => span class="badge" { (other) },
                                } }
                                td { (ago(&u["last_success_ms"], now)) }
                                td { (ago(&u["last_error_ms"], now)) }
                                td class="clip muted" {
                                    @if let Some(t) = u["throttled_until_ms"].as_u64() { "aside until " (when_secs(t / 1000)) " UTC. " }
                                    (s(&u["last_error"]))
                                }
                            }
                        }
                    }
                }
            }
        }))
    }
}

/// Cluster mode: the nodes seen through their heartbeats, Redis, and whether this node is
/// running on its own (degraded) — what `smtp-relay cluster status` prints.
fn cluster_card(c: &Value) -> Markup {
    let this = s(&c["node_id"]);
    html! {
        div class="card" id="cluster" {
            h2 {
                "Cluster "
                @if c["degraded"] == true {
                    span class="badge bad" { "degraded" }
                } @else {
                    span class="badge ok" { "shared" }
                }
            }
            p class="small" {
                "This node: " span class="mono" { (this) } ". Redis: "
                @if s(&c["redis"]) == "up" { span class="badge ok" { "up" } } @else { span class="badge bad" { (s(&c["redis"])) } }
                @if c["degraded"] == true {
                    " — serving with the cached registry; each project limited to " (s(&c["fallback_share"]))
                    " of its limits on this node; registry changes are refused until Redis is back."
                }
            }
            @let nodes = c["nodes"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            @if nodes.is_empty() {
                p class="empty" { "No heartbeat read (Redis unreachable from this node)." }
            } @else {
                table {
                    thead { tr { th { "Node" } th { "State" } th { "Listeners" } th { "Version" } th { "Queue" } th { "Last heartbeat" } } }
                    tbody {
                        @for n in nodes {
                            tr {
                                td class="mono" { (s(&n["id"])) @if s(&n["id"]) == this { " (this)" } }
                                td { @if s(&n["state"]) == "up" { span class="badge ok" { "up" } } @else { span class="badge bad" { (s(&n["state"])) } } }
                                td class="mono small" {
                                    @for (i, a) in n["addresses"].as_array().into_iter().flatten().enumerate() {
                                        @if i > 0 { br; } (s(a))
                                    }
                                }
                                td { (s(&n["version"])) }
                                td { @if let Some(q) = n["queue_depth"].as_u64() { (q) } }
                                td { @if let Some(a) = n["last_heartbeat_secs_ago"].as_u64() { (a) " s ago" } }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn duration_rough(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s} s"),
        s if s < 3600 => format!("{} min", s / 60),
        s if s < 86400 => format!("{} h", s / 3600),
        s => format!("{} d", s / 86400),
    }
}

fn enabled_badge(p: &Value) -> Markup {
    if p["enabled"].as_bool().unwrap_or(true) {
        html! { span class="badge ok" { "enabled" } }
    } else {
        html! { span class="badge bad" { "disabled" } }
    }
}

pub fn projects(ctx: Ctx<'_>, projects: &[Value]) -> Markup {
    let session = ctx.session;
    html! {
        (layout(ctx, "Projects", html! {
            div class="card" {
                @if projects.is_empty() {
                    p class="empty" { "No projects yet." }
                } @else {
                    table {
                        thead { tr { th { "Name" } th { "Id" } th { "Domains" } th { "Tokens" } th { "Status" } } }
                        tbody {
                            @for p in projects {
                                tr {
                                    td { a href={ "/projects/" (path_part(s(&p["id"]))) } { (s(&p["name"])) } }
                                    td class="mono" { (s(&p["id"])) }
                                    td { @for d in p["domains"].as_array().into_iter().flatten() { span class="chip" { (s(d)) } } }
                                    td class="num" { (p["tokens"].as_array().map_or(0, |t| t.len())) }
                                    td { (enabled_badge(p)) }
                                }
                            }
                        }
                    }
                }
            }
            @if session.is_admin() {
                div class="card" {
                    h2 { "New project" }
                    form method="post" action="/projects" class="grid" {
                        (csrf(session))
                        label { "Name" input name="name" required placeholder="Shop"; }
                        label { "Sender domains" input name="domains" required placeholder="shop.example.com, mail.shop.example.com"; }
                        label { "First token's label" input name="label" placeholder="production"; }
                        div { button class="primary" type="submit" { "Create project" } }
                    }
                }
            }
        }))
    }
}

pub fn project(
    ctx: Ctx<'_>,
    p: &Value,
    reveal: Option<&Reveal>,
    log: &[Value],
    suppressed: &[Value],
    sandbox: &Value,
) -> Markup {
    let session = ctx.session;
    let admin = session.is_admin();
    let id = s(&p["id"]);
    let base = format!("/projects/{}", path_part(id));
    let title = s(&p["name"]).to_string();
    let windows = p["limits"]["windows"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    html! {
        (layout(ctx, &title, html! {
            p class="sub" { span class="mono" { (id) } " " (enabled_badge(p)) }
            @if let Some(r) = reveal {
                div class="reveal" {
                    h2 { "New token — copy it now" }
                    p { "This is the only time it is shown. Apps log in with the project id as the username and this token as the password." }
                    dl {
                        dt { "Username" } dd class="mono" { (id) }
                        dt { "Token" } dd class="mono token" { (r.token.expose()) }
                        dt { "Token id" } dd class="mono" { (r.token_id) }
                    }
                }
            }
            div class="cols" {
                div class="card" {
                    h2 { "Sender domains" }
                    ul class="list" {
                        @for d in p["domains"].as_array().into_iter().flatten() {
                            li {
                                span { (s(d)) }
                                @if admin {
                                    form method="post" action={ (base) "/domains/remove" } class="inline" {
                                        (csrf(session))
                                        input type="hidden" name="domain" value=(s(d));
                                        button class="link danger" type="submit" { "Remove" }
                                    }
                                }
                            }
                        }
                    }
                    @if admin {
                        form method="post" action={ (base) "/domains" } class="row" {
                            (csrf(session))
                            input name="domain" required placeholder="another.example.com" aria-label="Domain";
                            button type="submit" { "Add domain" }
                        }
                    }
                }
                div class="card" {
                    h2 { "Tokens" }
                    table {
                        thead { tr { th { "Label" } th { "Id" } th { "Created" } th {} } }
                        tbody {
                            @for t in p["tokens"].as_array().into_iter().flatten() {
                                tr {
                                    td { (s(&t["label"])) }
                                    td class="mono" { (s(&t["id"])) }
                                    td class="when" { (t["created"].as_u64().map(day).unwrap_or_default()) }
                                    td {
                                        @if admin {
                                            form method="post" action={ (base) "/tokens/" (path_part(s(&t["id"]))) "/revoke" } class="inline" {
                                                (csrf(session))
                                                button class="link danger" type="submit" { "Revoke" }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                    @if admin {
                        form method="post" action={ (base) "/tokens" } class="row" {
                            (csrf(session))
                            input name="label" placeholder="label, e.g. staging" aria-label="Token label";
                            button type="submit" { "New token" }
                        }
                    }
                }
            }
            div class="card" {
                h2 { "Limits" span class="muted small" { " — over a limit: " (s(&p["limits"]["mode"])) } }
                table {
                    thead { tr { th { "Window" } th { "Limit" } th class="num" { "Used" } th class="num" { "Remaining" } th { "Set by" } } }
                    tbody {
                        @for w in &windows {
                            tr {
                                td { (s(&w["window"])) }
                                td { (w["limit"]) " " (s(&w["unit"])) " per " (s(&w["per"])) }
                                td class="num" { (w["used"]) }
                                td class="num" { (w["remaining"]) }
                                td { (s(&w["source"])) }
                            }
                        }
                        tr { td { "message size" } td { (p["limits"]["max_size"]) " bytes" } td {} td {} td {} }
                        tr { td { "recipients" } td { (p["limits"]["max_recipients"]) " per message" } td {} td {} td {} }
                    }
                }
            }
            div class="card" {
                h2 { "Settings" }
                div class="settings" {
                    div {
                        h3 { "Maximum queue age" }
                        p class="muted" {
                            @match p["max_age_secs"].as_u64() {
                                Some(v) => { (duration(v)) " (this project)" }
                                None => { "The server's default (queue.max_age_secs)." }
                            }
                        }
                        @if admin {
                            form method="post" action={ (base) "/max-age" } class="row" {
                                (csrf(session))
                                input name="max_age_secs" inputmode="numeric" placeholder="seconds; empty: default" aria-label="Maximum age in seconds";
                                button type="submit" { "Save" }
                            }
                        }
                    }
                    @if admin {
                        @let enabled = p["enabled"].as_bool().unwrap_or(true);
                        (switch(session, &Switch {
                            title: "Status",
                            action: format!("{base}/enabled"),
                            state: if enabled { "Apps of this project can send." } else { "Its tokens are refused." },
                            field: "enabled",
                            value: if enabled { "false" } else { "true" },
                            button: if enabled { "Disable project" } else { "Enable project" },
                        }))
                        @let sandboxed = s(&p["mode"]) == "sandbox";
                        (switch(session, &Switch {
                            title: "Mode",
                            action: format!("{base}/mode"),
                            state: if sandboxed { "Sandbox: mail is captured here, not sent." } else { "Live: mail is sent." },
                            field: "mode",
                            value: if sandboxed { "live" } else { "sandbox" },
                            button: if sandboxed { "Switch to live" } else { "Switch to sandbox" },
                        }))
                        @let bounces = p["bounces"].as_bool().unwrap_or(false);
                        (switch(session, &Switch {
                            title: "Bounce messages",
                            action: format!("{base}/bounces"),
                            state: if bounces { "On: the sender gets a delivery report for mail that failed." } else { "Off: failures reach the app as events and webhooks only." },
                            field: "enabled",
                            value: if bounces { "false" } else { "true" },
                            button: if bounces { "Turn off" } else { "Turn on" },
                        }))
                        div {
                            h3 { "Delete" }
                            p class="muted" { "Removes the project and its tokens." }
                            a class="button danger" href={ (base) "/delete" } { "Delete project…" }
                        }
                    }
                }
            }
            (sandbox_card(session, &base, sandbox))
            (suppression_card(session, &base, suppressed))
            div class="card" {
                h2 { "Recent messages" }
                (message_table(log, false))
                p { a href={ "/messages?project=" (path_part(id)) } { "All messages of this project →" } }
            }
        }))
    }
}

/// One two-state setting of the project page: what it is now, and the button that flips it.
struct Switch {
    title: &'static str,
    action: String,
    state: &'static str,
    field: &'static str,
    /// The value the button sends: the other state.
    value: &'static str,
    button: &'static str,
}

fn switch(session: &Session, w: &Switch) -> Markup {
    html! {
        div {
            h3 { (w.title) }
            p class="muted" { (w.state) }
            form method="post" action=(w.action) {
                (csrf(session))
                input type="hidden" name=(w.field) value=(w.value);
                button type="submit" { (w.button) }
            }
        }
    }
}

/// A sandbox project's captured mail (or what a live project still holds from a sandbox
/// spell): the newest, with Release (send it for real) and Clear.
fn sandbox_card(session: &Session, base: &str, sandbox: &Value) -> Markup {
    let admin = session.is_admin();
    let count = sandbox["count"].as_u64().unwrap_or(0);
    let messages: &[Value] = sandbox["messages"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    if s(&sandbox["mode"]) != "sandbox" && count == 0 {
        return html! {};
    }
    html! {
        div class="card" id="sandbox" {
            h2 { "Sandbox" span class="muted small" { " — " (count) " captured" } }
            p class="muted" {
                "Mail of a sandbox project goes through everything (branding, DKIM) and stops here instead of going out. "
                "Release sends one for real; " span class="mono" { "smtp-relay sandbox show --eml" } " gives its bytes."
            }
            @if messages.is_empty() {
                p class="muted" { "Nothing captured yet." }
            } @else {
                table {
                    thead { tr { th { "Received" } th { "Subject" } th { "To" } th class="num" { "Size" } th {} } }
                    tbody {
                        @for m in messages {
                            tr {
                                td class="when" { (when_ms(&m["received_ms"])) }
                                td class="clip" { @match m["subject"].as_str() { Some(t) if !t.is_empty() => (t), _ => span class="muted" { "(no subject)" } } }
                                td class="clip" {
                                    @for (i, r) in m["recipients"].as_array().into_iter().flatten().enumerate() {
                                        @if i > 0 { ", " }
                                        (s(r))
                                    }
                                }
                                td class="num" { (m["size"]) }
                                td {
                                    @if admin {
                                        form method="post" action={ (base) "/sandbox/" (path_part(s(&m["id"]))) "/release" } class="inline" {
                                            (csrf(session))
                                            button class="link" type="submit" { "Release" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if admin && count > 0 {
                form method="post" action={ (base) "/sandbox/clear" } class="row" {
                    (csrf(session))
                    button class="danger" type="submit" { "Delete all captured" }
                }
            }
        }
    }
}

/// The project's suppression list: who the relay refuses at RCPT after a permanent refusal,
/// why, until when, and (admins) a way to take an address off or put one on.
fn suppression_card(session: &Session, base: &str, suppressed: &[Value]) -> Markup {
    let admin = session.is_admin();
    html! {
        div class="card" id="suppressions" {
            h2 { "Suppressed recipients" span class="muted small" { " — " (suppressed.len()) } }
            p class="muted" {
                "An upstream refused these addresses for good, so mail to them is refused at RCPT ("
                span class="mono" { "550 5.1.1" } ") instead of bouncing again. Remove one once the address works again."
            }
            @if suppressed.is_empty() {
                p class="muted" { "None." }
            } @else {
                table {
                    thead { tr { th { "Recipient" } th { "Reason" } th { "Source" } th { "Added" } th { "Expires" } th {} } }
                    tbody {
                        @for e in suppressed {
                            tr {
                                td class="mono" { (s(&e["address"])) }
                                td class="small" { (s(&e["reason"])) }
                                td { (s(&e["source"])) }
                                td class="when" { (when_ms(&e["added_ms"])) }
                                td class="when" { (when_ms(&e["expires_ms"])) }
                                td {
                                    @if admin {
                                        form method="post" action={ (base) "/suppressions/remove" } class="inline" {
                                            (csrf(session))
                                            input type="hidden" name="address" value=(s(&e["address"]));
                                            button class="link danger" type="submit" { "Remove" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if admin {
                form method="post" action={ (base) "/suppressions" } class="row" {
                    (csrf(session))
                    input name="address" type="email" required placeholder="someone@example.com" aria-label="Address to suppress";
                    input name="reason" placeholder="reason (optional)" aria-label="Reason";
                    button type="submit" { "Suppress" }
                }
            }
        }
    }
}

pub fn confirm_delete(ctx: Ctx<'_>, p: &Value) -> Markup {
    let session = ctx.session;
    let id = s(&p["id"]);
    let base = format!("/projects/{}", path_part(id));
    html! {
        (layout(ctx, "Delete project", html! {
            div class="card narrow danger-zone" {
                p { "Delete " strong { (s(&p["name"])) } " (" span class="mono" { (id) } ")? Its apps can no longer send. This cannot be undone." }
                form method="post" action={ (base) "/delete" } {
                    (csrf(session))
                    label { "Type the project id to confirm" input name="confirm" required autocomplete="off"; }
                    div class="row" {
                        button class="danger" type="submit" { "Delete for good" }
                        a class="button" href=(base) { "Cancel" }
                    }
                }
            }
        }))
    }
}

fn recipients(m: &Value) -> String {
    let all: Vec<&str> = m["recipients"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| s(&r["address"]))
        .collect();
    match all.len() {
        0 => String::new(),
        1 => all[0].to_string(),
        n => format!("{} +{}", all[0], n - 1),
    }
}

fn message_table(log: &[Value], with_project: bool) -> Markup {
    html! {
        @if log.is_empty() {
            p class="empty" { "No messages." }
        } @else {
            table {
                thead { tr {
                    th { "Received" }
                    @if with_project { th { "Project" } }
                    th { "Subject" } th { "From" } th { "To" } th { "State" } th class="num" { "Attempts" }
                } }
                tbody {
                    @for m in log {
                        tr {
                            td class="when" { a href={ "/messages/" (path_part(s(&m["id"]))) } { (when_ms(&m["received_ms"])) } }
                            @if with_project { td class="mono" { (s(&m["project"])) } }
                            td class="clip" { a href={ "/messages/" (path_part(s(&m["id"]))) } {
                                @match m["subject"].as_str() { Some(t) if !t.is_empty() => (t), _ => span class="muted" { "(no subject)" } }
                            } }
                            td class="clip" { (m["from"].as_str().unwrap_or(s(&m["mail_from"]))) }
                            td class="clip" { (recipients(m)) }
                            // The last reply as a tooltip: the message's page shows every one.
                            td title=(s(&m["last_reply"])) { (state_badge(s(&m["state"]))) }
                            td class="num" { (m["attempts"]) }
                        }
                    }
                }
            }
        }
    }
}

/// The filters of the Messages page, as the form shows them (and its links repeat them).
#[derive(Debug, Default, Clone)]
pub struct MessageFilters {
    pub project: String,
    pub state: String,
    pub recipient: String,
    pub sender: String,
    pub q: String,
    /// `YYYY-MM-DD` (UTC), as an `<input type=date>` sends it.
    pub since: String,
    pub until: String,
}

impl MessageFilters {
    /// The query string of these filters (for the next page's link).
    pub fn query(&self) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("project", &self.project),
            ("state", &self.state),
            ("recipient", &self.recipient),
            ("sender", &self.sender),
            ("q", &self.q),
            ("since", &self.since),
            ("until", &self.until),
        ] {
            if !v.is_empty() {
                q.append_pair(k, v);
            }
        }
        q.finish()
    }
}

const STATES: [&str; 6] = [
    "queued",
    "deferred",
    "delivered",
    "failed",
    "expired",
    "deleted",
];

pub fn messages(
    ctx: Ctx<'_>,
    projects: &[Value],
    f: &MessageFilters,
    page: &Value,
    paged: bool,
) -> Markup {
    let log: &[Value] = page["messages"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let filters = f.query();
    html! {
        (layout(ctx, "Messages", html! {
            form method="get" action="/messages" class="card filters" {
                div class="grid" {
                    label { "Project"
                        select name="project" {
                            option value="" { "All projects" }
                            @for p in projects {
                                option value=(s(&p["id"])) selected[f.project == s(&p["id"])] { (s(&p["name"])) }
                            }
                        }
                    }
                    label { "State"
                        select name="state" {
                            option value="" { "Any state" }
                            @for st in STATES { option value=(st) selected[f.state == st] { (st) } }
                        }
                    }
                    label { "Recipient" input type="text" name="recipient" value=(f.recipient) placeholder="user@example.com"; }
                    label { "Sender" input type="text" name="sender" value=(f.sender) placeholder="noreply@ or a From name"; }
                    label { "From date" input type="date" name="since" value=(f.since); }
                    label { "To date" input type="date" name="until" value=(f.until); }
                    label class="wide" { "Search" input type="search" name="q" value=(f.q) placeholder="subject, From, address or id"; }
                }
                div class="row" {
                    button type="submit" { "Filter" }
                    @if !filters.is_empty() { a class="button secondary" href="/messages" { "Clear" } }
                    span class="muted small" { "Newest first, " (log.len()) " on this page." }
                }
            }
            div class="card" { (message_table(log, f.project.is_empty())) }
            div class="row pager" {
                @if paged { a class="button secondary" href={ "/messages?" (filters) } { "← Newest" } }
                @if let Some(c) = page["next_cursor"].as_str() {
                    a class="button secondary" rel="next" href={ "/messages?" (filters) (if filters.is_empty() { "" } else { "&" }) "cursor=" (c) } { "Older →" }
                }
            }
        }))
    }
}

pub fn message(ctx: Ctx<'_>, m: &Value) -> Markup {
    let session = ctx.session;
    let id = s(&m["id"]);
    let base = format!("/messages/{}", path_part(id));
    let waiting = matches!(s(&m["state"]), "queued" | "deferred");
    html! {
        (layout(ctx, "Message", html! {
            p class="sub" { span class="mono" { (id) } " " (state_badge(s(&m["state"]))) }
            div class="card" {
                dl class="facts" {
                    dt { "Subject" } dd class="wrap" { (s(&m["subject"])) }
                    dt { "From" } dd class="wrap" { (s(&m["from"])) }
                }
            }
            div class="cols" {
                div class="card" {
                    h2 { "Envelope" }
                    dl class="facts" {
                        dt { "Project" } dd { a class="mono" href={ "/projects/" (path_part(s(&m["project"]))) } { (s(&m["project"])) } }
                        dt { "MAIL FROM" } dd class="mono" { (s(&m["mail_from"])) }
                        dt { "Size" } dd { (m["size"]) " bytes" }
                        dt { "Client" } dd class="mono" { (s(&m["client_ip"])) }
                        dt { "Received" } dd { (when_ms(&m["received_ms"])) " UTC" }
                        dt { "Expires" } dd { (when_ms(&m["expires_ms"])) " UTC" }
                    }
                }
                div class="card" {
                    h2 { "Delivery" }
                    dl class="facts" {
                        dt { "State" } dd { (state_badge(s(&m["state"]))) }
                        dt { "Attempts" } dd { (m["attempts"]) }
                        @if waiting { dt { "Next attempt" } dd { (when_ms(&m["next_attempt_ms"])) " UTC" } }
                        dt { "Upstream" } dd { (s(&m["upstream"])) }
                        dt { "Last reply" } dd class="mono wrap" { (s(&m["last_reply"])) }
                    }
                    @if waiting && session.is_admin() {
                        div class="row" {
                            form method="post" action={ (base) "/retry" } class="inline" {
                                (csrf(session))
                                button type="submit" { "Retry now" }
                            }
                            form method="post" action={ (base) "/delete" } class="inline" {
                                (csrf(session))
                                button class="danger" type="submit" { "Delete from queue" }
                            }
                        }
                    }
                }
            }
            div class="card" {
                h2 { "Recipients" }
                table {
                    thead { tr { th { "Address" } th { "State" } th { "Reply" } } }
                    tbody {
                        @for r in m["recipients"].as_array().into_iter().flatten() {
                            tr {
                                td class="mono" { (s(&r["address"])) }
                                td { (state_badge(s(&r["state"]))) }
                                td class="muted wrap" { (s(&r["reply"])) }
                            }
                        }
                    }
                }
            }
            div class="card" {
                h2 { "Delivery attempts" }
                @let attempts = m["attempt_log"].as_array().map(Vec::as_slice).unwrap_or(&[]);
                @if attempts.is_empty() {
                    p class="empty" { "No delivery attempt yet." }
                } @else {
                    table class="attempts" {
                        thead { tr { th class="num" { "#" } th { "When (UTC)" } th class="num" { "After" } th { "Outcome" }
                            th { "Upstream" } th { "Recipients" } th { "Reply" } } }
                        tbody {
                            @for a in attempts {
                                tr {
                                    td class="num" { (a["attempt"]) }
                                    td class="when" { (when_ms(&a["time_ms"])) }
                                    td class="num" { (format!("{:.1} s", a["after_ms"].as_u64().unwrap_or(0) as f64 / 1000.0)) }
                                    td { (state_badge(match s(&a["outcome"]) { "relayed" => "delivered", "deferred" => "deferred", _ => "failed" })) }
                                    td class="mono" { (s(&a["upstream"])) }
                                    td class="mono small" {
                                        @for r in a["recipients"].as_array().into_iter().flatten() { (s(r)) br; }
                                    }
                                    td class="mono wrap" { (s(&a["reply"])) }
                                }
                            }
                        }
                    }
                }
            }
            div class="card" {
                h2 { "Header fields" span class="muted small" { " — as the message was queued" } }
                @let headers = m["summary"]["headers"].as_array().map(Vec::as_slice).unwrap_or(&[]);
                @if headers.is_empty() {
                    p class="empty" { "Not recorded for this message." }
                } @else {
                    table class="headers" {
                        tbody {
                            @for h in headers {
                                tr { th class="mono" { (s(&h["name"])) } td class="mono wrap" { (s(&h["value"])) } }
                            }
                        }
                    }
                    @if let Some(n) = m["summary"]["headers_omitted"].as_u64() {
                        p class="muted small" { (n) " more fields not kept." }
                    }
                }
            }
        }))
    }
}
