//! Per-project upstream routes: which named `[upstream.<name>]` a project's mail goes to
//! first, and which ones after it when that one is unreachable.
//!
//! Stored in their own sled tree (`routes`, keyed by project id) so they change with
//! `smtp-relay project route` on a running server without a restart; a project without an
//! entry uses the config's `[delivery] default_route` and `default_fallbacks`. Transform reads
//! the first upstream of a route at acceptance (From rewriting); outbound reads the whole
//! route at delivery time.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::{Config, UpstreamConfig};
use crate::store::{Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub upstream: String,
    #[serde(default)]
    pub fallbacks: Vec<String>,
}

impl Route {
    /// The upstreams in the order they are tried.
    pub fn names(&self) -> Vec<String> {
        let mut out = vec![self.upstream.clone()];
        for f in &self.fallbacks {
            if !out.contains(f) {
                out.push(f.clone());
            }
        }
        out
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("no upstream named {0:?} in the server's config (known: {1})")]
    UnknownUpstream(String, String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sled::Error> for RouteError {
    fn from(e: sled::Error) -> Self {
        RouteError::Store(StoreError::Sled(e))
    }
}

/// The route table plus what it needs from the config: the default route and the upstreams
/// that exist.
#[derive(Clone, Debug)]
pub struct RouteTable {
    tree: sled::Tree,
    store: Store,
    config: Arc<Config>,
}

impl RouteTable {
    pub fn new(store: Store, config: Arc<Config>) -> RouteTable {
        RouteTable {
            tree: store.routes.clone(),
            store,
            config,
        }
    }

    pub fn default_route(&self) -> Route {
        Route {
            upstream: self.config.delivery.default_route.clone(),
            fallbacks: self.config.delivery.default_fallbacks.clone(),
        }
    }

    /// The project's own route, if it has one.
    pub fn get(&self, project: &str) -> Result<Option<Route>, RouteError> {
        match self.tree.get(project.as_bytes())? {
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| RouteError::Store(StoreError::Corrupt(e.to_string()))),
            None => Ok(None),
        }
    }

    /// The route in force for a project: its own, else the default. A stored route naming an
    /// upstream that is no longer configured keeps its other upstreams (the delivery log says
    /// which name is missing).
    pub fn resolve(&self, project: &str) -> Route {
        match self.get(project) {
            Ok(Some(r)) => r,
            Ok(None) => self.default_route(),
            Err(e) => {
                tracing::error!(project, error = %e, "cannot read the project's route; using the default route");
                self.default_route()
            }
        }
    }

    fn check(&self, name: &str) -> Result<(), RouteError> {
        if self.config.upstreams.contains_key(name) {
            Ok(())
        } else {
            let known: Vec<&str> = self.config.upstreams.keys().map(String::as_str).collect();
            Err(RouteError::UnknownUpstream(
                name.to_string(),
                known.join(", "),
            ))
        }
    }

    pub fn set(&self, project: &str, route: &Route) -> Result<(), RouteError> {
        for n in route.names() {
            self.check(&n)?;
        }
        let bytes = serde_json::to_vec(route).unwrap_or_default();
        self.tree.insert(project.as_bytes(), bytes)?;
        self.store.flush_now()?;
        Ok(())
    }

    pub fn clear(&self, project: &str) -> Result<(), RouteError> {
        self.tree.remove(project.as_bytes())?;
        self.store.flush_now()?;
        Ok(())
    }

    /// The config the table was built with (domain verify reads `[dns]` and the upstreams).
    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// Checks a name against the config (send-test's `--upstream`).
    pub fn upstream(&self, name: &str) -> Result<&UpstreamConfig, RouteError> {
        self.check(name)?;
        self.config
            .upstreams
            .get(name)
            .ok_or_else(|| RouteError::UnknownUpstream(name.to_string(), String::new()))
    }

    /// The address header From is rewritten to for mail of this project, decided by the
    /// first upstream of its route (see DESIGN.md, "From rewriting").
    pub fn from_rewrite(&self, project: &str) -> Option<String> {
        let route = self.resolve(project);
        self.config
            .upstreams
            .get(&route.upstream)
            .and_then(UpstreamConfig::rewrite_address)
    }
}
