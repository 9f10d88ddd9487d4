//! A client of the JSON admin API (`/api/v1`) over real HTTP, for the API tests.

use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::relay::Relay;

pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(relay: &Relay) -> Api {
        Api {
            base: format!("http://{}", relay.listener_addr("admin_http")),
            http: relay.http_client(),
        }
    }

    /// One call with a bearer token and an optional JSON body; the answer parsed as JSON
    /// (a string when it is not). Every answer must carry `nosniff`.
    pub async fn call(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("HTTP request");
        let status = resp.status();
        let headers = resp.headers().clone();
        assert_eq!(
            headers.get("x-content-type-options").map(|v| v.as_bytes()),
            Some(&b"nosniff"[..]),
            "{path}"
        );
        let text = resp.text().await.unwrap();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    }

    pub async fn get(&self, token: &str, path: &str) -> (StatusCode, Value) {
        self.call(token, Method::GET, path, None).await
    }
}
