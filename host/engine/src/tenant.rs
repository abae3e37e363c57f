//! Tenants: who a pipeline belongs to, and what each tenant may use.
//!
//! Every pipeline has a tenant ([`DEFAULT_TENANT`] unless its config names
//! one). The tenant is the first part of every state key of its pipes and
//! windows ([`crate::state::Namespace`]) and of its checkpoint records, so
//! tenants sharing one backend never see each other's keys. A host running
//! many pipelines ([`Tenants`]) enforces per-tenant quotas on the number of
//! pipelines and on the bytes of state (keys and values).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde::Deserialize;

pub use crate::state::DEFAULT_TENANT;
use crate::state::{Namespace, SharedState, StateError};

/// Checks a tenant name: 1 to 64 ASCII letters, digits, `_`, `-` or `.`.
///
/// # Errors
///
/// What is wrong with the name.
pub fn check_tenant_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!(
            "a tenant name has 1 to 64 characters; `{name}` has {}",
            name.len()
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(format!(
            "tenant name `{name}` contains {bad:?}; use ASCII letters, digits, `_`, `-` and `.`"
        ));
    }
    Ok(())
}

/// What one tenant may use. Absent fields are unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TenantQuota {
    /// Pipelines the tenant may run at once.
    #[serde(default)]
    pub max_pipelines: Option<usize>,
    /// Bytes of state (keys and values, committed and pending) the tenant
    /// may hold across all its pipelines.
    #[serde(default)]
    pub max_state_bytes: Option<u64>,
}

/// Why a tenant may not start another pipeline.
#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    /// The tenant already runs as many pipelines as it may.
    #[error("tenant `{tenant}` already runs {running} pipelines, its quota")]
    Pipelines {
        /// The tenant.
        tenant: String,
        /// How many it runs.
        running: usize,
    },
    /// Its state could not be measured.
    #[error("cannot measure the state of tenant `{tenant}`")]
    State {
        /// The tenant.
        tenant: String,
        /// Why.
        #[source]
        source: StateError,
    },
}

/// The quotas and the usage of every tenant of one host.
#[derive(Default)]
pub struct Tenants {
    quotas: HashMap<String, TenantQuota>,
    usage: Mutex<HashMap<String, Arc<TenantUsage>>>,
    multi_tenant: std::sync::atomic::AtomicBool,
}

/// One tenant's usage.
pub struct TenantUsage {
    tenant: String,
    quota: TenantQuota,
    pipelines: AtomicUsize,
    state_bytes: AtomicI64,
    /// Whether `state_bytes` has been measured from the backend yet.
    measured: tokio::sync::OnceCell<()>,
}

impl TenantUsage {
    /// The tenant's name.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// Pipelines running now.
    pub fn pipelines(&self) -> usize {
        self.pipelines.load(Ordering::Relaxed)
    }

    /// Bytes of state charged now (measured when the first pipeline
    /// started, then kept up to date by every write).
    pub fn state_bytes(&self) -> i64 {
        self.state_bytes.load(Ordering::Relaxed)
    }

    /// The tenant's quota.
    pub fn quota(&self) -> &TenantQuota {
        &self.quota
    }
}

impl Tenants {
    /// A registry with these quotas (tenants not listed are unlimited).
    pub fn new(quotas: HashMap<String, TenantQuota>) -> Arc<Self> {
        let multi_tenant = !quotas.is_empty();
        Arc::new(Tenants {
            quotas,
            usage: Mutex::new(HashMap::new()),
            multi_tenant: std::sync::atomic::AtomicBool::new(multi_tenant),
        })
    }

    /// Marks the host as running several tenants' pipelines (it is already
    /// when quotas are set): unsandboxed executables are then refused.
    pub fn set_multi_tenant(&self) {
        self.multi_tenant.store(true, Ordering::Relaxed);
    }

    /// Whether the host runs several tenants' pipelines.
    pub fn is_multi_tenant(&self) -> bool {
        self.multi_tenant.load(Ordering::Relaxed)
    }

    /// The usage record of `tenant`, created on first use.
    pub fn usage(&self, tenant: &str) -> Arc<TenantUsage> {
        let mut usage = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        usage
            .entry(tenant.to_owned())
            .or_insert_with(|| {
                Arc::new(TenantUsage {
                    tenant: tenant.to_owned(),
                    quota: self.quotas.get(tenant).cloned().unwrap_or_default(),
                    pipelines: AtomicUsize::new(0),
                    state_bytes: AtomicI64::new(0),
                    measured: tokio::sync::OnceCell::new(),
                })
            })
            .clone()
    }

    /// Every tenant seen so far.
    pub fn all(&self) -> Vec<Arc<TenantUsage>> {
        let usage = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = usage.values().cloned().collect();
        all.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        all
    }

    /// Admits one more pipeline of `tenant` on `backend`: counts it against
    /// the pipeline quota and, when the tenant has a state quota, measures
    /// its state once. The pipeline counts until the lease is dropped.
    ///
    /// # Errors
    ///
    /// The tenant is at its pipeline quota, or its state cannot be read.
    pub async fn admit(
        &self,
        tenant: &str,
        backend: &SharedState,
    ) -> Result<TenantLease, QuotaError> {
        let usage = self.usage(tenant);
        let max = usage.quota.max_pipelines.unwrap_or(usize::MAX);
        let admitted =
            usage
                .pipelines
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |running| {
                    (running < max).then_some(running + 1)
                });
        if let Err(running) = admitted {
            return Err(QuotaError::Pipelines {
                tenant: tenant.to_owned(),
                running,
            });
        }
        let lease = TenantLease {
            usage: usage.clone(),
        };
        if usage.quota.max_state_bytes.is_some() {
            usage
                .measured
                .get_or_try_init(|| async {
                    let entries = backend
                        .scan_prefix(&Namespace::tenant_prefix(tenant))
                        .await?;
                    let bytes: usize = entries.iter().map(|(k, v)| k.len() + v.len()).sum();
                    usage.state_bytes.store(bytes as i64, Ordering::Relaxed);
                    Ok::<(), StateError>(())
                })
                .await
                .map_err(|source| QuotaError::State {
                    tenant: tenant.to_owned(),
                    source,
                })?;
        }
        Ok(lease)
    }
}

/// One admitted pipeline; dropping it frees its place in the quota.
pub struct TenantLease {
    usage: Arc<TenantUsage>,
}

impl TenantLease {
    /// The state quota its pipes write under (`None`: unlimited).
    pub fn state_quota(&self) -> Option<StateQuota> {
        self.usage
            .quota
            .max_state_bytes
            .map(|max_bytes| StateQuota {
                usage: self.usage.clone(),
                max_bytes,
            })
    }

    /// The tenant's usage.
    pub fn usage(&self) -> &Arc<TenantUsage> {
        &self.usage
    }
}

impl Drop for TenantLease {
    fn drop(&mut self) {
        self.usage.pipelines.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A tenant's state quota, as seen by one pipe's state view.
#[derive(Clone)]
pub struct StateQuota {
    usage: Arc<TenantUsage>,
    max_bytes: u64,
}

impl StateQuota {
    /// Charges `delta` bytes (negative: frees them).
    ///
    /// # Errors
    ///
    /// The charge would take the tenant past its quota; nothing is charged.
    pub fn try_charge(&self, delta: i64) -> Result<(), StateError> {
        if delta <= 0 {
            self.usage.state_bytes.fetch_add(delta, Ordering::Relaxed);
            return Ok(());
        }
        let max = i64::try_from(self.max_bytes).unwrap_or(i64::MAX);
        self.usage
            .state_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(delta).filter(|next| *next <= max)
            })
            .map(|_| ())
            .map_err(|_| StateError::Quota {
                tenant: self.usage.tenant.clone(),
                quota: self.max_bytes,
            })
    }

    /// Gives back `charged` bytes of a call that was undone.
    pub fn refund(&self, charged: i64) {
        self.usage.state_bytes.fetch_sub(charged, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{MemoryState, PipeState, WriteMode};

    #[test]
    fn tenant_names_are_checked() {
        assert!(check_tenant_name("acme-1.eu_west").is_ok());
        for bad in ["", "a/b", "a b", "..\0", &"x".repeat(65), "é"] {
            assert!(check_tenant_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[tokio::test]
    async fn pipeline_quota_counts_leases() {
        let tenants = Tenants::new(HashMap::from([(
            "acme".to_owned(),
            TenantQuota {
                max_pipelines: Some(2),
                max_state_bytes: None,
            },
        )]));
        let backend: SharedState = Arc::new(MemoryState::new());
        let first = tenants.admit("acme", &backend).await.unwrap();
        let _second = tenants.admit("acme", &backend).await.unwrap();
        assert!(matches!(
            tenants.admit("acme", &backend).await,
            Err(QuotaError::Pipelines { running: 2, .. })
        ));
        // Other tenants are not limited by acme's quota.
        let _other = tenants.admit("globex", &backend).await.unwrap();
        drop(first);
        assert!(tenants.admit("acme", &backend).await.is_ok());
    }

    #[tokio::test]
    async fn state_quota_refuses_growth_and_refunds_undone_calls() {
        let tenants = Tenants::new(HashMap::from([(
            "acme".to_owned(),
            TenantQuota {
                max_pipelines: None,
                max_state_bytes: Some(200),
            },
        )]));
        let backend: SharedState = Arc::new(MemoryState::new());
        let lease = tenants.admit("acme", &backend).await.unwrap();
        let namespace = Namespace::for_tenant_pipe("acme", "p", "q");
        let mut state = PipeState::new(backend.clone(), namespace.clone(), WriteMode::Checkpointed)
            .with_quota(lease.state_quota());
        state.set("a", vec![0; 100]).await.unwrap();
        let used = lease.usage().state_bytes();
        assert_eq!(used, (namespace.key("a").len() + 100) as i64);
        // Overwriting charges only the difference.
        state.set("a", vec![0; 150]).await.unwrap();
        assert_eq!(lease.usage().state_bytes(), used + 50);
        assert!(matches!(
            state.set("b", vec![0; 100]).await,
            Err(StateError::Quota { .. })
        ));
        // A failed call gives its charge back.
        state.end_call(false);
        assert_eq!(lease.usage().state_bytes(), 0);
        state.set("a", vec![0; 10]).await.unwrap();
        state.delete("a").await.unwrap();
        state.end_call(true);
        assert_eq!(lease.usage().state_bytes(), 0);
    }

    /// Write-through writes reach the backend at once and a failed call
    /// cannot take them back: their charge stays, so the charged bytes are
    /// always the bytes stored.
    #[tokio::test]
    async fn a_failed_write_through_call_keeps_its_charge() {
        let tenants = Tenants::new(HashMap::from([(
            "acme".to_owned(),
            TenantQuota {
                max_pipelines: None,
                max_state_bytes: Some(200),
            },
        )]));
        let backend: SharedState = Arc::new(MemoryState::new());
        let lease = tenants.admit("acme", &backend).await.unwrap();
        let namespace = Namespace::for_tenant_pipe("acme", "p", "q");
        let stored = || async {
            backend
                .scan_prefix(&Namespace::tenant_prefix("acme"))
                .await
                .unwrap()
                .iter()
                .map(|(k, v)| (k.len() + v.len()) as i64)
                .sum::<i64>()
        };
        let mut state = PipeState::new(backend.clone(), namespace, WriteMode::WriteThrough)
            .with_quota(lease.state_quota());
        state.set("a", vec![0; 100]).await.unwrap();
        state.add("n", 7).await.unwrap();
        state.end_call(false);
        assert!(stored().await > 100);
        assert_eq!(lease.usage().state_bytes(), stored().await);
        // The quota holds across failed calls: what is refused was never written.
        for i in 0..10 {
            let _ = state.set(&format!("k{i}"), vec![0; 20]).await;
            state.end_call(false);
        }
        assert_eq!(lease.usage().state_bytes(), stored().await);
        assert!(stored().await <= 200, "{} bytes stored", stored().await);
    }
}
