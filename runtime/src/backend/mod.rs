//! Backends: where an application's records come from and go to, where its
//! committed state lives, and how a task's transaction commits atomically.
//!
//! The executor ([`crate::task`]) knows nothing of them: a driver reads input
//! for a task from its backend, hands it to the task, and at commit points
//! passes the task's [`TaskCommit`](crate::task::TaskCommit) to the backend.
//! - [`memory`]: everything in memory; deterministic; used by `weir test`.
//! - [`embedded`]: RocksDB in a local data directory; durable, exactly-once;
//!   what `weir serve` runs on without brokers.
//! - [`kafka`]: a Kafka cluster; instances of an application share its
//!   partitions through a consumer group; stores are local RocksDB copies of
//!   changelog topics.

pub mod control;
pub mod embedded;
pub mod kafka;
pub mod memory;
