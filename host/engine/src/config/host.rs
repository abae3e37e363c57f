//! The config of a host running many pipelines (`plumber run --host`).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::strict::{self, object_only};
use super::{read_json, ConfigError};

object_only!(HostConfig, AdminConfig);

/// The config of a host running many pipelines (`plumber run --host`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, remote = "Self")]
pub struct HostConfig {
    /// Pipeline config files to run (relative: against this file's directory).
    #[serde(default)]
    pub pipelines: Vec<PathBuf>,
    /// The admin and metrics server (default: off).
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// Quotas per tenant; tenants not listed are unlimited.
    #[serde(default, deserialize_with = "strict::map_of_objects")]
    pub tenants: std::collections::HashMap<String, crate::tenant::TenantQuota>,
    /// Milliseconds between status lines on stderr when it is a terminal
    /// (default 5000; 0: never).
    #[serde(default)]
    pub status_interval_ms: Option<u64>,
}

/// `"admin"`: where the admin server listens and its token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, remote = "Self")]
pub struct AdminConfig {
    /// Address to listen on (default `127.0.0.1:9464`). A non-loopback
    /// address needs a token.
    #[serde(default = "default_admin_listen")]
    pub listen: std::net::SocketAddr,
    /// The environment variable holding the bearer token the mutating
    /// calls need (a token is not written in the file itself).
    #[serde(default)]
    pub token_env: Option<String>,
    /// The directory `{"path": …}` module swaps may read from (relative:
    /// against this file's directory); without it, path swaps are refused.
    #[serde(default)]
    pub module_dir: Option<PathBuf>,
}

/// The default admin address: loopback only, Prometheus' usual port range.
pub const DEFAULT_ADMIN_LISTEN: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9464);

fn default_admin_listen() -> std::net::SocketAddr {
    DEFAULT_ADMIN_LISTEN
}

impl HostConfig {
    /// Reads and checks a host config, resolving relative pipeline paths
    /// against its directory.
    ///
    /// # Errors
    ///
    /// The file cannot be read, or a field is bad (the error names its JSON path).
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        let origin = file.display().to_string();
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.to_path_buf(),
            source,
        })?;
        let mut config: HostConfig = read_json(&text, &origin)?;
        for tenant in config.tenants.keys() {
            crate::tenant::check_tenant_name(tenant).map_err(|message| ConfigError::Invalid {
                file: origin.clone(),
                path: format!("tenants.{tenant}"),
                message,
            })?;
        }
        if let Some(AdminConfig {
            token_env: Some(name),
            ..
        }) = &config.admin
        {
            if std::env::var(name).map_or(true, |token| token.trim().is_empty()) {
                return Err(ConfigError::Invalid {
                    file: origin,
                    path: "admin.token_env".to_owned(),
                    message: format!("the environment variable `{name}` is not set or empty"),
                });
            }
        }
        let base = file.parent().unwrap_or(Path::new("."));
        for path in &mut config.pipelines {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
        if let Some(dir) = config.admin.as_mut().and_then(|a| a.module_dir.as_mut()) {
            if dir.is_relative() {
                *dir = base.join(&*dir);
            }
        }
        Ok(config)
    }
}
