//! The `plumber` tool: the command line ([`cli`]), the benchmark suite
//! ([`bench`]), `plumber build` ([`build`]) and `plumber new` ([`new`]).
//! Not part of the library an embedder links (`plumber`).

pub mod bench;
pub mod build;
pub mod cli;
pub mod new;
