//! `GET /api/v1/openapi.json`: the JSON API described as OpenAPI 3.1, written by hand next to
//! the routes (a test checks that every route in `api::ROUTES` is described and nothing else),
//! so scripts and API tools can discover it. It is served without a token: it describes the
//! API, it holds nothing secret.

use serde_json::{Map, Value, json};

/// (method, path, summary, request body schema, success status) of every route.
fn operations() -> Vec<(&'static str, &'static str, &'static str, Option<Value>, u16)> {
    let label = json!({"type": "string", "description": "free text, e.g. production"});
    let branding_update = json!({
        "type": "object",
        "properties": {
            "display_name": {"type": "string"},
            "contact_email": {"type": "string"},
            "contact_phone": {"type": "string"},
            "logo": {"type": "string", "contentEncoding": "base64"},
            "logo_url": {"type": "string"},
            "no_logo": {"type": "boolean"},
            "header_template": {"type": "string"},
            "footer_template": {"type": "string"},
            "text_footer": {"type": "string"},
            "default_templates": {"type": "boolean"},
            "off": {"type": "boolean"},
        }
    });
    vec![
        (
            "GET",
            "/api/v1/projects",
            "List projects (tokens are never shown)",
            None,
            200,
        ),
        (
            "POST",
            "/api/v1/projects",
            "Create a project; the answer carries its first token, shown this once",
            Some(json!({
                "type": "object", "required": ["name"], "additionalProperties": false,
                "properties": {
                    "name": {"type": "string"},
                    "domains": {"type": "array", "items": {"type": "string"}},
                    "label": label,
                    "max_age_secs": {"type": ["integer", "null"], "minimum": 0},
                }
            })),
            201,
        ),
        (
            "GET",
            "/api/v1/projects/{id}",
            "A project with its limits and usage",
            None,
            200,
        ),
        (
            "PATCH",
            "/api/v1/projects/{id}",
            "Enable/disable a project, set its maximum queue age (null: the default), turn bounce messages on/off",
            Some(json!({
                "type": "object", "additionalProperties": false,
                "properties": {
                    "enabled": {"type": "boolean"},
                    "bounces": {"type": "boolean"},
                    "max_age_secs": {"type": ["integer", "null"], "minimum": 0},
                }
            })),
            200,
        ),
        (
            "DELETE",
            "/api/v1/projects/{id}",
            "Delete a project and its tokens",
            None,
            200,
        ),
        (
            "GET",
            "/api/v1/projects/{id}/tokens",
            "A project's tokens (ids and labels)",
            None,
            200,
        ),
        (
            "POST",
            "/api/v1/projects/{id}/tokens",
            "Add a token; the answer carries it, shown this once",
            Some(json!({
                "type": "object", "additionalProperties": false,
                "properties": {"label": label}
            })),
            201,
        ),
        (
            "DELETE",
            "/api/v1/projects/{id}/tokens/{token_id}",
            "Revoke a token",
            None,
            200,
        ),
        (
            "POST",
            "/api/v1/projects/{id}/domains",
            "Add a sender domain",
            Some(json!({
                "type": "object", "required": ["domain"], "additionalProperties": false,
                "properties": {"domain": {"type": "string"}}
            })),
            201,
        ),
        (
            "DELETE",
            "/api/v1/projects/{id}/domains/{domain}",
            "Remove a sender domain (not the last one)",
            None,
            200,
        ),
        (
            "GET",
            "/api/v1/projects/{id}/limits",
            "A project's limits and usage",
            None,
            200,
        ),
        (
            "PUT",
            "/api/v1/projects/{id}/limits",
            "Merge limit overrides into the project's",
            Some(json!({
                "type": "object",
                "description": "per_second, burst, per_minute, per_hour, per_day, \
                                recipients_per_day, max_connections, mode, …",
            })),
            200,
        ),
        (
            "DELETE",
            "/api/v1/projects/{id}/limits",
            "Back to the default limits",
            None,
            200,
        ),
        (
            "GET",
            "/api/v1/projects/{id}/branding",
            "A project's branding settings (null before the first set-up)",
            None,
            200,
        ),
        (
            "PUT",
            "/api/v1/projects/{id}/branding",
            "Change branding: display name, contacts, logo (base64 PNG/JPEG/GIF, at most 200 KiB: \
             413 above), logo URL, templates, on/off",
            Some(branding_update.clone()),
            200,
        ),
        (
            "POST",
            "/api/v1/projects/{id}/branding/preview",
            "A sample password-reset mail branded by the real transform (html with the logo as a \
             data: URL, text, the MIME message); an optional body previews unsaved changes",
            Some(branding_update),
            200,
        ),
        (
            "GET",
            "/api/v1/projects/{id}/route",
            "A project's upstream route",
            None,
            200,
        ),
        (
            "PUT",
            "/api/v1/projects/{id}/route",
            "Route a project to an upstream (with fallbacks)",
            Some(json!({
                "type": "object", "required": ["upstream"], "additionalProperties": false,
                "properties": {
                    "upstream": {"type": "string"},
                    "fallbacks": {"type": "array", "items": {"type": "string"}},
                }
            })),
            200,
        ),
        (
            "DELETE",
            "/api/v1/projects/{id}/route",
            "Back to the default route",
            None,
            200,
        ),
        (
            "GET",
            "/api/v1/projects/{id}/suppressions",
            "The project's suppressed recipients (reason, source, added_ms, expires_ms)",
            None,
            200,
        ),
        (
            "POST",
            "/api/v1/projects/{id}/suppressions",
            "Suppress a recipient by hand (expires after suppression.expire_secs)",
            Some(json!({
                "type": "object", "required": ["address"], "additionalProperties": false,
                "properties": {
                    "address": {"type": "string"},
                    "reason": {"type": "string"},
                }
            })),
            201,
        ),
        (
            "DELETE",
            "/api/v1/projects/{id}/suppressions/{address}",
            "Let mail to a suppressed recipient through again",
            None,
            200,
        ),
        (
            "GET",
            "/api/v1/queue",
            "Messages waiting for delivery",
            None,
            200,
        ),
        (
            "GET",
            "/api/v1/queue/{id}",
            "One message: envelope, state, attempts",
            None,
            200,
        ),
        (
            "DELETE",
            "/api/v1/queue/{id}",
            "Delete a waiting message",
            None,
            200,
        ),
        (
            "POST",
            "/api/v1/queue/{id}/retry",
            "Retry a waiting message now",
            None,
            200,
        ),
        (
            "GET",
            "/api/v1/messages",
            "The message log, newest first: filters ?project= &state= &recipient= &sender= \
             &since= &until= (Unix seconds) &q= (subject, From, addresses, id); \
             ?limit= (1-200, default 50); the answer's next_cursor, passed as ?cursor=, \
             gives the next page",
            None,
            200,
        ),
        (
            "GET",
            "/api/v1/messages/{id}",
            "One message: envelope, subject, header From, header fields, size, and every \
             delivery attempt (attempt_log) with upstream, reply and timing",
            None,
            200,
        ),
        (
            "POST",
            "/api/v1/send-test",
            "Send a test message through the project's route (or one upstream) now, bypassing \
             the queue; the answer says in plain words whether it was delivered \
             ({delivered, result, upstream, reply}); an upstream's refusal is delivered: false",
            Some(json!({
                "type": "object", "required": ["project", "to"],
                "properties": {
                    "project": {"type": "string"},
                    "to": {"type": "string"},
                    "upstream": {"type": "string"},
                    "from": {"type": "string"},
                }
            })),
            200,
        ),
        (
            "GET",
            "/api/v1/stats",
            "Counts over the last ?hours= (1-720, default 24) per project and overall (accepted, \
             relayed, deferred, failed, rate_limited), hourly buckets (up to 168), queue depth \
             and oldest message, each upstream's last success, last error and throttling",
            None,
            200,
        ),
        (
            "GET",
            "/api/v1/admin-tokens",
            "List admin tokens (never the tokens)",
            None,
            200,
        ),
        (
            "POST",
            "/api/v1/admin-tokens",
            "Create an admin token; the answer carries it, shown this once",
            Some(json!({
                "type": "object", "required": ["label", "role"], "additionalProperties": false,
                "properties": {
                    "label": {"type": "string"},
                    "role": {"type": "string", "enum": ["admin", "viewer"]},
                }
            })),
            201,
        ),
        (
            "DELETE",
            "/api/v1/admin-tokens/{id}",
            "Revoke an admin token",
            None,
            200,
        ),
        (
            "GET",
            "/api/v1/webhooks",
            "Webhook endpoints (?project= for one project's); secrets are never shown",
            None,
            200,
        ),
        (
            "POST",
            "/api/v1/webhooks",
            "Add a webhook endpoint (no project: every project's events); the answer carries its whsec_ secret, shown this once",
            Some(json!({
                "type": "object", "required": ["url", "events"], "additionalProperties": false,
                "properties": {
                    "project": {"type": ["string", "null"]},
                    "url": {"type": "string", "description": "https:// (http:// to loopback only when allowed)"},
                    "events": {"type": "array", "items": {"type": "string",
                        "enum": ["accepted", "relayed", "deferred", "failed", "suppressed", "rate_limited"]}},
                }
            })),
            201,
        ),
        (
            "GET",
            "/api/v1/webhooks/{id}",
            "A webhook endpoint with the deliveries it is owed and its last attempts",
            None,
            200,
        ),
        (
            "DELETE",
            "/api/v1/webhooks/{id}",
            "Remove a webhook endpoint (deliveries owed to it are dropped)",
            None,
            200,
        ),
        (
            "POST",
            "/api/v1/webhooks/{id}/test",
            "Queue a signed webhook.test event for the endpoint",
            None,
            200,
        ),
        (
            "POST",
            "/api/v1/webhooks/{id}/rotate-secret",
            "A new whsec_ secret (shown once); the old one also signs for 24 hours",
            None,
            200,
        ),
        (
            "POST",
            "/api/v1/webhooks/{id}/enable",
            "Enable an endpoint disabled by 410 Gone or days of failures",
            None,
            200,
        ),
        (
            "GET",
            "/api/v1/status",
            "The running server: version, uptime, listeners, TLS certificate expiry, queue, upstreams, store, each project's last hour",
            None,
            200,
        ),
        (
            "GET",
            "/api/v1/dkim",
            "DKIM keys (?domain= for one domain) with state, owners and the DNS record of each",
            None,
            200,
        ),
        (
            "POST",
            "/api/v1/dkim/keys",
            "Generate a key (pending until activated; the private key never leaves the server)",
            Some(json!({
                "type": "object", "required": ["domain"], "additionalProperties": false,
                "properties": {
                    "domain": {"type": "string"},
                    "selector": {"type": "string", "description": "default: s<yyyymm>"},
                    "algorithm": {"enum": ["rsa", "ed25519"]},
                    "bits": {"type": "integer"},
                    "activate": {"type": "boolean"},
                }
            })),
            201,
        ),
        (
            "POST",
            "/api/v1/dkim/import",
            "Import a private key (PEM)",
            Some(json!({
                "type": "object", "required": ["domain", "selector", "private_key"],
                "additionalProperties": false,
                "properties": {
                    "domain": {"type": "string"},
                    "selector": {"type": "string"},
                    "private_key": {"type": "string"},
                    "activate": {"type": "boolean"},
                }
            })),
            201,
        ),
        (
            "GET",
            "/api/v1/dkim/{domain}/dns",
            "The DNS records to publish for a domain (DKIM per key, suggested SPF and DMARC)",
            None,
            200,
        ),
        (
            "DELETE",
            "/api/v1/dkim/{domain}/{selector}",
            "Remove a key that is not active",
            None,
            200,
        ),
        (
            "POST",
            "/api/v1/dkim/{domain}/{selector}/activate",
            "Make a key the one that signs (the previous one starts retiring)",
            None,
            200,
        ),
        (
            "POST",
            "/api/v1/dkim/{domain}/{selector}/retire",
            "Stop signing with a key (keep its record published a few days)",
            None,
            200,
        ),
        (
            "PUT",
            "/api/v1/projects/{id}/mode",
            "Live (mail is sent) or sandbox (mail is captured, see /sandbox)",
            Some(json!({
                "type": "object", "required": ["mode"], "additionalProperties": false,
                "properties": {"mode": {"type": "string", "enum": ["live", "sandbox"]}}
            })),
            200,
        ),
        (
            "GET",
            "/api/v1/projects/{id}/sandbox",
            "A project's captured messages, newest first (?limit=, at most 1000)",
            None,
            200,
        ),
        (
            "DELETE",
            "/api/v1/projects/{id}/sandbox",
            "Drop every captured message of a project",
            None,
            200,
        ),
        (
            "GET",
            "/api/v1/sandbox/{id}",
            "One captured message with its text (eml) and exact bytes (eml_base64)",
            None,
            200,
        ),
        (
            "GET",
            "/api/v1/sandbox/{id}/eml",
            "One captured message as a message/rfc822 download",
            None,
            200,
        ),
        (
            "POST",
            "/api/v1/sandbox/{id}/release",
            "Send one captured message to its real recipients (it enters the queue)",
            None,
            200,
        ),
        (
            "GET",
            "/api/v1/cluster",
            "Cluster mode: nodes seen (heartbeats), Redis state, degraded or not",
            None,
            200,
        ),
        ("GET", "/api/v1/openapi.json", "This document", None, 200),
    ]
}

fn parameters(path: &str) -> Vec<Value> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| {
            json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}})
        })
        .collect()
}

/// The OpenAPI 3.1 document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for (method, path, summary, body, status) in operations() {
        let mut op = json!({
            "summary": summary,
            "responses": {
                status.to_string(): {
                    "description": "the result",
                    "content": {"application/json": {"schema": {}}}
                },
                "default": {"$ref": "#/components/responses/Error"}
            }
        });
        let params = parameters(path);
        if !params.is_empty() {
            op["parameters"] = Value::Array(params);
        }
        if let Some(schema) = body {
            op["requestBody"] = json!({
                "required": true,
                "content": {"application/json": {"schema": schema}}
            });
        }
        if path == "/api/v1/openapi.json" {
            op["security"] = json!([]);
        }
        let entry = paths
            .entry(path.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        entry[method.to_ascii_lowercase()] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "smtp-relay admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The admin operations of the CLI over HTTP. Authenticate with \
                            `Authorization: Bearer smtpa_…` (smtp-relay admin token add); \
                            viewer tokens may only GET."
        },
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {"Error": {
                "description": "refused: 400 malformed request (names the field), 401 no/invalid \
                                token, 403 viewer, 404 not found, 409 conflict, 413 too large, \
                                422 invalid value (field names it), 429 cooling down, \
                                503 unavailable",
                "content": {"application/json": {"schema": {
                    "type": "object",
                    "properties": {"error": {"type": "object", "properties": {
                        "code": {"type": "string", "enum": ["bad_request", "unauthorized",
                            "forbidden", "not_found", "conflict", "too_large", "invalid",
                            "unavailable", "internal", "unsupported_media_type",
                            "rate_limited"]},
                        "message": {"type": "string"},
                        "field": {"type": "string", "description": "the refused input field"}
                    }}}
                }}}
            }}
        },
        "paths": paths,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn every_route_is_described_and_nothing_else() {
        let doc = document();
        let described: BTreeSet<(String, String)> = doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, ops)| {
                ops.as_object()
                    .unwrap()
                    .keys()
                    .map(|m| (m.to_ascii_uppercase(), path.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let routed: BTreeSet<(String, String)> = super::super::api::ROUTES
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        assert_eq!(described, routed);
        assert_eq!(doc["openapi"], "3.1.0");
    }
}
