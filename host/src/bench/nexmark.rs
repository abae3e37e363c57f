//! Nexmark (placeholder, being written).

use super::{BenchArgs, BenchError, Table};
use crate::runtime::Runtime;

/// The Nexmark queries.
///
/// # Errors
///
/// A guest is missing or a pipeline failed.
pub async fn run(_args: &BenchArgs, _rt: &Runtime, _table: &mut Table) -> Result<(), BenchError> {
    Ok(())
}
