//! Helpers for the web panel tests: the admin HTTP address from listeners.json, and a
//! browser-like HTTP client that keeps the session cookie and reads the CSRF token from pages.

use std::net::SocketAddr;

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Response, StatusCode};

use super::relay::Relay;

/// Where the relay's `[admin_http]` listener is.
pub fn admin_http_addr(relay: &Relay) -> SocketAddr {
    relay.listener_addr("admin_http")
}

/// An admin token made with the CLI.
pub fn admin_token(relay: &Relay, role: &str) -> String {
    let v = relay.cli_json(&["admin", "token", "add", "--label", "ops", "--role", role]);
    v["token"].as_str().unwrap().to_string()
}

/// The value of the first `name="csrf"` hidden field of a page.
pub fn csrf_of(html: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let at = html.find(marker).expect("a form with a CSRF token") + marker.len();
    html[at..].split('"').next().unwrap().to_string()
}

/// A session as a browser holds it: no automatic redirects, one cookie.
pub struct Panel {
    pub base: String,
    pub http: reqwest::Client,
    /// `name=value` of the session cookie, once logged in.
    pub cookie: Option<String>,
}

impl Panel {
    pub fn new(relay: &Relay) -> Panel {
        let http = relay.http_client();
        Panel {
            base: format!("http://{}", admin_http_addr(relay)),
            http,
            cookie: None,
        }
    }

    /// The same over HTTPS (`[admin_http] tls = true`).
    pub fn new_tls(relay: &Relay) -> Panel {
        let mut p = Panel::new(relay);
        p.base = format!("https://{}", admin_http_addr(relay));
        p
    }

    fn headers(&self, extra: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(c) = &self.cookie {
            h.insert("cookie", HeaderValue::from_str(c).unwrap());
        }
        for (k, v) in extra {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    pub async fn get(&self, path: &str) -> Response {
        self.http
            .get(format!("{}{path}", self.base))
            .headers(self.headers(&[]))
            .send()
            .await
            .expect("GET")
    }

    /// A page's status and HTML.
    pub async fn page(&self, path: &str) -> (StatusCode, String) {
        let r = self.get(path).await;
        (r.status(), r.text().await.unwrap())
    }

    /// POSTs a form as the panel's own page would (same `Origin`, `Sec-Fetch-Site`).
    pub async fn post(&self, path: &str, form: &[(&str, &str)]) -> Response {
        let origin = self.base.clone();
        self.post_with(
            path,
            form,
            &[("origin", &origin), ("sec-fetch-site", "same-origin")],
        )
        .await
    }

    /// [`Panel::post`] with `csrf` added, as an admin's form that must be taken: asserts the
    /// redirect back (`303`).
    pub async fn post_ok(&self, path: &str, csrf: &str, form: &[(&str, &str)]) {
        let mut f = form.to_vec();
        f.push(("csrf", csrf));
        let r = self.post(path, &f).await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{path}");
    }

    pub async fn post_with(
        &self,
        path: &str,
        form: &[(&str, &str)],
        headers: &[(&'static str, &str)],
    ) -> Response {
        self.http
            .post(format!("{}{path}", self.base))
            .headers(self.headers(headers))
            .form(form)
            .send()
            .await
            .expect("POST")
    }

    /// POSTs a `multipart/form-data` form (fields: name, file name for a file, bytes) as the
    /// panel's own page would.
    pub async fn post_multipart(
        &self,
        path: &str,
        fields: &[(&str, Option<&str>, &[u8])],
    ) -> Response {
        let boundary = "----smtp-relay-test-boundary-7d3f";
        let mut body = Vec::new();
        for (name, file, data) in fields {
            body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
            match file {
                Some(f) => body.extend_from_slice(
                    format!(
                        "Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\n\
                         Content-Type: application/octet-stream\r\n\r\n"
                    )
                    .as_bytes(),
                ),
                None => body.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
                ),
            }
            body.extend_from_slice(data);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        let origin = self.base.clone();
        let ct = format!("multipart/form-data; boundary={boundary}");
        self.http
            .post(format!("{}{path}", self.base))
            .headers(self.headers(&[
                ("origin", &origin),
                ("sec-fetch-site", "same-origin"),
                ("content-type", &ct),
            ]))
            .body(body)
            .send()
            .await
            .expect("POST")
    }

    /// Logs in with `token`; answers the `Set-Cookie` header.
    pub async fn login(&mut self, token: &str) -> String {
        let r = self.post("/login", &[("token", token)]).await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "login refused");
        let set = r
            .headers()
            .get("set-cookie")
            .expect("a session cookie")
            .to_str()
            .unwrap()
            .to_string();
        self.cookie = Some(set.split(';').next().unwrap().to_string());
        set
    }

    /// The CSRF token of the session, from the overview page.
    pub async fn csrf(&self) -> String {
        let (st, html) = self.page("/").await;
        assert_eq!(st, StatusCode::OK, "{html}");
        csrf_of(&html)
    }
}
