//! `GET /api/v1/openapi.json`: the JSON API described as OpenAPI 3.1, written by hand next to
//! the routes (a test checks that every route in `api::ROUTES` is described and nothing else),
//! so scripts and API tools can discover it. It is served without a token: it describes the
//! API, it holds nothing secret.

use serde_json::{Map, Value, json};

/// (method, path, summary, request body schema, success status) of every route.
fn operations() -> Vec<(&'static str, &'static str, &'static str, Option<Value>, u16)> {
    let label = json!({"type": "string", "description": "free text, e.g. production"});
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
            "Enable/disable a project or set its maximum queue age (null: the default)",
            Some(json!({
                "type": "object", "additionalProperties": false,
                "properties": {
                    "enabled": {"type": "boolean"},
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
            "The message log, newest first (?project=&limit=, at most 1000)",
            None,
            200,
        ),
        (
            "GET",
            "/api/v1/messages/{id}",
            "One message of the log",
            None,
            200,
        ),
        (
            "POST",
            "/api/v1/send-test",
            "Send a test message through an upstream and report its reply",
            Some(json!({"type": "object"})),
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
                "description": "refused: 401 no/invalid token, 403 viewer, 404 not found, \
                                409 conflict, 422 invalid input, 429 cooling down",
                "content": {"application/json": {"schema": {
                    "type": "object",
                    "properties": {"error": {"type": "object", "properties": {
                        "code": {"type": "string"}, "message": {"type": "string"}
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
