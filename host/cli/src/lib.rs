//! The `plumber` tool: the command line ([`cli`]), the benchmark suite
//! ([`bench`]), `plumber build` ([`build`]) and `plumber new` ([`new`]) and `plumber test` ([`replay_test`]).
//! Not part of the library an embedder links (`plumber`).

pub mod bench;
pub mod build;
pub mod cli;
pub mod new;
pub mod replay_test;
