//! weir: a Kafka stream-processing runtime whose processors are sandboxed
//! WebAssembly components.
//!
//! The host (this crate) owns partitions, tasks, state stores and their
//! changelogs, co-partitioning, repartitioning, exactly-once commits and hot
//! swap; the guest (a component built with `weir-sdk`) owns only business
//! logic. Modules, from the outside in:
//!
//! - [`topology`]: the application spec, its validation, sub-topologies.
//! - [`wasm`]: the engine, component loading and caching, host imports, limits.
//! - [`task`]: the executor: one task per sub-topology × partition.
//! - [`state`]: store overlays over committed state.
//! - [`backend`]: where records come from and go to, and how a commit
//!   happens (in memory for `weir test`; the embedded RocksDB backend for
//!   `weir serve`).
//! - [`node`], [`api`], [`registry`], [`config`]: `weir serve`, its HTTP
//!   API, the component registry, configuration; [`client`]: the CLI clients.
//! - [`partitioner`]: Kafka's murmur2 default partitioner.
//! - [`testdriver`]: `weir test`, the offline topology runner.

pub mod api;
pub mod author;
pub mod backend;
pub mod bench;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod dev;
pub mod jsonl;
pub mod metrics;
pub mod node;
pub mod partitioner;
pub mod progress;
pub mod record;
pub mod registry;
pub mod serve;
pub mod state;
pub mod status;
pub mod task;
pub mod testdriver;
pub mod timestamps;
pub mod topology;
pub mod wasm;
