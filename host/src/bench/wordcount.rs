//! Word count over generated text (placeholder, being written).

use super::{BenchArgs, BenchError, Table};
use crate::runtime::Runtime;

/// The word-count scenarios.
///
/// # Errors
///
/// A guest is missing or a pipeline failed.
pub async fn run(_args: &BenchArgs, _rt: &Runtime, _table: &mut Table) -> Result<(), BenchError> {
    Ok(())
}

/// One and two pipelines in parallel.
///
/// # Errors
///
/// A guest is missing or a pipeline failed.
pub async fn run_scaling(
    _args: &BenchArgs,
    _rt: &Runtime,
    _table: &mut Table,
) -> Result<(), BenchError> {
    Ok(())
}

/// Peak RSS at 1x and 5x input.
///
/// # Errors
///
/// A guest is missing or a pipeline failed.
pub async fn run_memory(
    _args: &BenchArgs,
    _rt: &Runtime,
    _table: &mut Table,
) -> Result<(), BenchError> {
    Ok(())
}
