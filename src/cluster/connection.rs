//! The Redis connection of a cluster node: one `ConnectionManager` (multiplexed, reconnects by
//! itself) for commands, made lazily so a node starts while Redis is down, and a deadline on
//! every command so a slow or dead Redis costs a session at most `command_timeout_ms`.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, FromRedisValue, IntoConnectionInfo};
use tokio::sync::OnceCell;

use crate::config::cluster::ClusterConfig;
use crate::secret::Secret;

use super::ClusterError;

pub struct Connection {
    client: Client,
    manager: OnceCell<ConnectionManager>,
    pub timeout: Duration,
}

impl Connection {
    /// Builds the client (no network yet) with the ACL user and password given apart from
    /// the URL, so the password never appears in a URL that might be logged.
    pub fn new(
        config: &ClusterConfig,
        password: Option<Secret>,
    ) -> Result<Connection, ClusterError> {
        let mut info = config
            .redis_url
            .as_str()
            .into_connection_info()
            .map_err(|e| ClusterError::Config(format!("cluster.redis_url: {e}")))?;
        let mut settings = info.redis_settings().clone();
        if let Some(user) = &config.username {
            settings = settings.set_username(user);
        }
        if let Some(pw) = password.filter(|p| !p.expose().is_empty()) {
            settings = settings.set_password(pw.expose());
        }
        info = info.set_redis_settings(settings);
        let client = match &config.ca_file {
            Some(ca) => {
                let pem = std::fs::read(ca).map_err(|e| {
                    ClusterError::Config(format!("cluster.ca_file: {}: {e}", ca.display()))
                })?;
                let certs = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                };
                Client::build_with_tls(info, certs)
                    .map_err(|e| ClusterError::Config(format!("cluster.ca_file: {e}")))?
            }
            None => Client::open(info)
                .map_err(|e| ClusterError::Config(format!("cluster.redis_url: {e}")))?,
        };
        Ok(Connection {
            client,
            manager: OnceCell::new(),
            timeout: Duration::from_millis(config.command_timeout_ms),
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The shared manager, connecting it on first use (under the command deadline).
    pub async fn manager(&self) -> Result<ConnectionManager, ClusterError> {
        let m = tokio::time::timeout(
            self.timeout * 4,
            self.manager.get_or_try_init(|| async {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_secs(1));
                self.client.get_connection_manager_with_config(config).await
            }),
        )
        .await
        .map_err(|_| ClusterError::Unavailable("connect timed out".into()))?
        .map_err(|e| ClusterError::Unavailable(e.to_string()))?;
        Ok(m.clone())
    }

    /// One command under the deadline.
    pub async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, ClusterError> {
        let mut m = self.manager().await?;
        tokio::time::timeout(self.timeout, cmd.query_async::<T>(&mut m))
            .await
            .map_err(|_| ClusterError::Unavailable("command timed out".into()))?
            .map_err(|e| ClusterError::Unavailable(e.to_string()))
    }

    /// A pipeline (atomic when built with `.atomic()`) under the deadline.
    pub async fn pipe<T: FromRedisValue>(&self, p: &redis::Pipeline) -> Result<T, ClusterError> {
        let mut m = self.manager().await?;
        tokio::time::timeout(self.timeout * 4, p.query_async::<T>(&mut m))
            .await
            .map_err(|_| ClusterError::Unavailable("pipeline timed out".into()))?
            .map_err(|e| ClusterError::Unavailable(e.to_string()))
    }

    /// A Lua script (EVALSHA, loaded on first use) under the deadline.
    pub async fn script<T: FromRedisValue>(
        &self,
        inv: &redis::ScriptInvocation<'_>,
    ) -> Result<T, ClusterError> {
        let mut m = self.manager().await?;
        tokio::time::timeout(self.timeout, inv.invoke_async::<T>(&mut m))
            .await
            .map_err(|_| ClusterError::Unavailable("script timed out".into()))?
            .map_err(|e| ClusterError::Unavailable(e.to_string()))
    }
}
