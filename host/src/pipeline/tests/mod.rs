//! Unit tests of the engine parts, without WASM or servers.
