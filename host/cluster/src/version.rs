//! The NATS server version gate: partitioning needs stream subject
//! transforms (2.10); 2.11 adds per-key TTLs and pinned-client priority
//! groups, and is recommended.

use std::fmt;

use crate::ClusterError;

/// The oldest server that partitions: stream subject transforms came in
/// 2.10 (Debian's 2.9 drops a stream's `subject_transform` silently).
pub const REQUIRED: ServerVersion = ServerVersion {
    major: 2,
    minor: 10,
    patch: 0,
};

/// The oldest server recommended (per-key TTL, pinned-client priority
/// groups).
pub const RECOMMENDED: ServerVersion = ServerVersion {
    major: 2,
    minor: 11,
    patch: 0,
};

/// A NATS server version, `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerVersion {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
    /// Patch.
    pub patch: u32,
}

impl fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl ServerVersion {
    /// Reads a version as a server's INFO gives it: `2.12.8`, `v2.10.0`,
    /// `2.11.0-beta.2` (what follows the patch is ignored). `None` when it
    /// is not one.
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim().trim_start_matches('v');
        let mut parts = text.splitn(3, '.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch_text = parts.next().unwrap_or("0");
        let digits: String = patch_text
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        let patch = digits.parse().ok()?;
        Some(ServerVersion {
            major,
            minor,
            patch,
        })
    }
}

/// What the gate says about a server that may be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Recommended or newer.
    Good(ServerVersion),
    /// Works, but older than [`RECOMMENDED`]: the text says what is missing.
    Old(ServerVersion, String),
}

/// Checks the version a server reported (`server_info().version`).
///
/// # Errors
///
/// [`ClusterError::ServerTooOld`] naming subject transforms for a server
/// older than [`REQUIRED`], [`ClusterError::ServerVersion`] for a version
/// that cannot be read.
pub fn check(reported: &str, server: &str) -> Result<Verdict, ClusterError> {
    let version = ServerVersion::parse(reported).ok_or_else(|| ClusterError::ServerVersion {
        server: server.to_owned(),
        reported: reported.to_owned(),
    })?;
    if version < REQUIRED {
        return Err(ClusterError::ServerTooOld {
            server: server.to_owned(),
            version: version.to_string(),
        });
    }
    if version < RECOMMENDED {
        return Ok(Verdict::Old(
            version,
            format!(
                "nats-server {version} at {server} works, but {RECOMMENDED} or newer is \
                 recommended (per-key TTLs, pinned-client priority groups)"
            ),
        ));
    }
    Ok(Verdict::Good(version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_and_gated() {
        assert_eq!(
            ServerVersion::parse("2.11.0-beta.2"),
            Some(ServerVersion {
                major: 2,
                minor: 11,
                patch: 0
            })
        );
        assert_eq!(ServerVersion::parse("v2.9.10").map(|v| v.minor), Some(9));
        assert_eq!(ServerVersion::parse("nats"), None);
        let old = check("2.9.10", "nats://x").unwrap_err().to_string();
        assert!(old.contains("subject transform"), "{old}");
        assert!(matches!(check("2.10.4", "x"), Ok(Verdict::Old(..))));
        assert!(matches!(check("2.12.8", "x"), Ok(Verdict::Good(..))));
        assert!(matches!(
            check("garbage", "x"),
            Err(ClusterError::ServerVersion { .. })
        ));
    }
}
