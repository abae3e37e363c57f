//! Host bindings generated from `wit/plumber.wit`.
//!
//! Imports and exports are async so that state reads can await a backend
//! (sled, Redis) without blocking the runtime's threads.

wasmtime::component::bindgen!({
    world: "stateful-pipe",
    path: "../../wit",
    imports: { default: async },
    exports: { default: async },
    additional_derives: [PartialEq, Eq, serde::Serialize, serde::Deserialize],
});
