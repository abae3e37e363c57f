//! Capabilities: what a pipe may reach beyond our WIT.
//!
//! By default nothing: the WASI context of every instance has an empty
//! environment, no arguments, no preopened directory, an empty stdin, and
//! stdout/stderr that go to the log. A pipe's config may grant clocks,
//! random, a list of environment variables and one read-only directory;
//! sockets, HTTP and writable files are never linked for a guest.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder};

use super::guest_output::{GuestOutput, LogBudget};

/// Optional WASI interfaces a pipe may be granted by name.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Grant {
    /// `wasi:clocks/*`: wall and monotonic clocks.
    Clocks,
    /// `wasi:random/*`: random bytes (e.g. for `HashMap`'s seed).
    Random,
    /// `wasi:filesystem/*` with no directory in it (unless `read_only_dir`
    /// gives one): for guests that import the interfaces without using
    /// them, as Go does through the WASI preview 1 adapter. Gives no access
    /// to any file.
    FilesystemInterfaces,
}

impl Grant {
    fn allows(self, interface: &str) -> bool {
        match self {
            Grant::Clocks => interface.starts_with("wasi:clocks/"),
            Grant::Random => interface.starts_with("wasi:random/"),
            Grant::FilesystemInterfaces => interface.starts_with("wasi:filesystem/"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Grant::Clocks => "wasi:clocks",
            Grant::Random => "wasi:random",
            Grant::FilesystemInterfaces => "wasi:filesystem (no directories)",
        }
    }
}

/// A host directory the guest may read (never write) under `guest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadOnlyDir {
    /// The directory on the host (relative paths: against the config's directory).
    pub host: PathBuf,
    /// Where the guest sees it, e.g. `/data`.
    pub guest: String,
}

/// Everything a pipe is granted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Named WASI interfaces.
    pub grants: Vec<Grant>,
    /// Host environment variables passed to the guest (only these, only
    /// when set on the host).
    pub env: Vec<String>,
    /// One directory the guest may read.
    pub read_only_dir: Option<ReadOnlyDir>,
}

impl Capabilities {
    /// Whether a component may import `interface`.
    pub(crate) fn allows(&self, interface: &str) -> bool {
        always_granted(interface)
            || self.grants.iter().any(|grant| grant.allows(interface))
            || (self.read_only_dir.is_some() && interface.starts_with("wasi:filesystem/"))
    }

    /// The granted optional interfaces, for error messages.
    pub(crate) fn describe(&self) -> String {
        let mut granted: Vec<&str> = self.grants.iter().map(|g| g.name()).collect();
        granted.sort_unstable();
        granted.dedup();
        let mut text: String = granted.iter().map(|name| format!(", {name}/*")).collect();
        if self.read_only_dir.is_some() {
            text.push_str(", wasi:filesystem/* (read-only directory)");
        }
        text
    }

    /// The WASI context of one instance of pipe `pipe` of `tenant`.
    ///
    /// # Errors
    ///
    /// The read-only directory cannot be opened.
    pub(crate) fn wasi_ctx(
        &self,
        tenant: &str,
        pipe: &str,
        log_budget: &Arc<LogBudget>,
    ) -> Result<WasiCtx, String> {
        let mut builder = WasiCtxBuilder::new();
        builder
            .stdout(GuestOutput::new(tenant, pipe, "stdout", log_budget.clone()))
            .stderr(GuestOutput::new(tenant, pipe, "stderr", log_budget.clone()));
        for name in &self.env {
            if let Ok(value) = std::env::var(name) {
                builder.env(name, value);
            }
        }
        if let Some(dir) = &self.read_only_dir {
            builder
                .preopened_dir(&dir.host, &dir.guest, FsPerms::ReadOnly)
                .map_err(|e| {
                    format!(
                        "cannot open read-only directory `{}` for the guest: {e:#}",
                        dir.host.display()
                    )
                })?;
        }
        Ok(builder.build())
    }
}

/// Imports every pipe may have: our own interfaces, and the WASI plumbing
/// that a Rust `std` guest imports even when it never uses it. The
/// environment holds only granted variables, stdin is empty and output goes
/// to the log, so none of these gives access to anything of the host's.
fn always_granted(interface: &str) -> bool {
    const CLI: &[&str] = &[
        "environment",
        "exit",
        "stdin",
        "stdout",
        "stderr",
        "terminal-input",
        "terminal-output",
        "terminal-stdin",
        "terminal-stdout",
        "terminal-stderr",
    ];
    if interface.starts_with("plumber:pipe/") || interface.starts_with("wasi:io/") {
        return true;
    }
    interface
        .strip_prefix("wasi:cli/")
        .map(|rest| rest.split('@').next().unwrap_or(rest))
        .is_some_and(|name| CLI.contains(&name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_beyond_our_wit_by_default() {
        let none = Capabilities::default();
        assert!(none.allows("plumber:pipe/state@0.1.0"));
        assert!(none.allows("wasi:cli/stdout@0.2.6"));
        for refused in [
            "wasi:filesystem/types@0.2.6",
            "wasi:filesystem/preopens@0.2.6",
            "wasi:sockets/tcp@0.2.6",
            "wasi:sockets/instance-network@0.2.6",
            "wasi:http/outgoing-handler@0.2.6",
            "wasi:clocks/wall-clock@0.2.6",
            "wasi:random/random@0.2.6",
        ] {
            assert!(!none.allows(refused), "{refused} allowed by default");
        }
        let granted = Capabilities {
            grants: vec![Grant::Clocks, Grant::Random],
            env: vec![],
            read_only_dir: Some(ReadOnlyDir {
                host: "/tmp".into(),
                guest: "/data".into(),
            }),
        };
        assert!(granted.allows("wasi:clocks/monotonic-clock@0.2.6"));
        assert!(granted.allows("wasi:random/insecure-seed@0.2.6"));
        assert!(granted.allows("wasi:filesystem/types@0.2.6"));
        assert!(!granted.allows("wasi:sockets/tcp@0.2.6"));
        let go = Capabilities {
            grants: vec![Grant::FilesystemInterfaces],
            ..Capabilities::default()
        };
        assert!(go.allows("wasi:filesystem/preopens@0.2.12"));
        assert!(!go.allows("wasi:sockets/tcp@0.2.12"));
    }
}
