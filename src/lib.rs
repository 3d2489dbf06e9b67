//! sluice: ingest events from Redis and run each one through a sandboxed WebAssembly plugin.
//!
//! The folders are the architecture; every arrow points down (a module imports only those
//! below it; `README.md`'s Layout section draws the tree):
//!
//! - [`cli`]: the command line, one file per command group, one `Ctx`;
//! - [`host`]: `sluice run` — a host's life, registering, the reconcile plan, plugins, jobs;
//! - [`bench`]: `sluice bench`, measured against baselines in the same process;
//! - [`tools`]: plugin authors' tools with no Redis (`plugin new|inspect|test`);
//! - [`runner`]: one job's pipeline — source → handler → committer;
//! - [`runtime`]: wasmtime only (no Redis); [`store`]: Redis only (no wasmtime);
//!   [`scan`]: the filesystem only (a scan job's directories looked at);
//! - [`config`]: the config file's format, producing [`model`] values;
//! - [`metrics`]: every metric sluice exports, declared in one place; [`logging`]: log
//!   format, filter and its reload;
//! - [`model`]: the shared floor — events, outcomes, policy, job specs; imports nothing of ours.
#![deny(unsafe_code)]

pub mod bench;
pub mod cli;
pub mod config;
pub mod host;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod runner;
pub mod runtime;
pub mod scan;
pub mod store;
pub mod tools;
