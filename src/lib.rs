//! sluice: ingest events from Redis and run each one through a sandboxed WebAssembly plugin.
//!
//! Layout (see `README.md` for the product, `wit/` for the plugin interface):
//! - [`event`]: what both sides share — events, dispositions, effects, outcomes;
//! - [`runtime`]: wasmtime — engine, plugins, instances, host functions (no Redis);
//! - [`store`]: Redis — keys, streams, the commit script, job state (no wasmtime);
//! - [`runner`]: one job's loop joining a source, a handler and the commit;
//! - [`service`]: a host's life; [`config`], [`cli`], [`bench`]: the surfaces.
#![deny(unsafe_code)]

pub mod bench;
pub mod cli;
pub mod config;
pub mod ctl;
pub mod event;
pub mod policy;
pub mod runner;
pub mod runtime;
pub mod service;
pub mod store;
pub mod tools;
pub mod watch;
