//! What a running application reports about itself: per task, its state,
//! positions and lag, counters and last error. Shared by every backend and
//! served by the status API.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The state of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TaskState {
    /// Being created: components instantiated, state restored.
    Starting,
    Running,
    /// A commit failed (storage): retried periodically; nothing was committed.
    Stalled,
    /// Stopped for good: error policy `fail`, or `init` failed. Its input
    /// offsets stay uncommitted.
    Failed,
}

/// An input partition of a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputStatus {
    pub topic: String,
    pub partition: u32,
    /// Committed position: the next offset to read after a restart.
    pub committed: i64,
    /// End of the partition.
    pub end: i64,
    /// `end - committed`.
    pub lag: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskStatus {
    /// `subtopology_partition`.
    pub id: String,
    pub subtopology: usize,
    pub partition: u32,
    pub state: TaskState,
    pub error: Option<String>,
    pub inputs: Vec<InputStatus>,
    pub records_in: u64,
    pub processed: BTreeMap<String, u64>,
    pub emitted: BTreeMap<String, u64>,
    pub dead_letters: u64,
    pub skipped: u64,
    pub failures: BTreeMap<String, u64>,
    pub partition_mismatches: u64,
    pub commits: u64,
    /// Restore progress of the task's stores: records restored / to restore.
    pub restore: Option<(u64, u64)>,
    /// How long the restore took (Kafka: from its start until the task's
    /// stores reached their changelogs' ends), once it is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_ms: Option<u64>,
}

/// One update of a running application: a component swap, or a restart
/// for a change of the graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwapRecord {
    pub id: u64,
    /// Milliseconds since the Unix epoch.
    pub started_ms: i64,
    /// `component-swap` or `restart` (the graph changed).
    pub kind: String,
    /// Processor → component before and after.
    pub from: BTreeMap<String, String>,
    pub to: BTreeMap<String, String>,
    /// `switching`: tasks are moving to the new version at their next commit;
    /// `switched`: every task runs it (each on probation until its first
    /// commit of processed records); `applied`: every task passed probation;
    /// `rolled-back`: the new version failed `init` or trapped on probation
    /// and every task went back (nothing it did was committed).
    pub state: String,
    pub error: Option<String>,
    pub tasks: usize,
    pub switched: usize,
    pub passed: usize,
    /// Longest time a task paused to switch (commit + instantiate + init).
    pub max_pause_ms: f64,
    /// When the last task switched (ms since the epoch).
    pub switched_ms: Option<i64>,
}

/// The whole application.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppStatus {
    pub name: String,
    pub backend: String,
    pub guarantee: String,
    /// `running` when every task runs, else the worst task state.
    pub state: String,
    pub lag: i64,
    pub tasks: Vec<TaskStatus>,
    /// Processor → component (`sha256:<hex>`).
    pub components: BTreeMap<String, String>,
    /// Processor → `name@version` of its component, when it was pushed by name.
    pub component_versions: BTreeMap<String, String>,
    /// Updates, oldest first.
    pub swaps: Vec<SwapRecord>,
    /// Global tables' input partitions: how far their stores are loaded
    /// (`committed` = next offset to apply).
    #[serde(default)]
    pub global_inputs: Vec<InputStatus>,
}

impl AppStatus {
    /// Derives `state` and `lag` from the tasks.
    pub fn summarize(&mut self) {
        self.lag = self.tasks.iter().flat_map(|t| t.inputs.iter().map(|i| i.lag)).sum();
        let worst = |s: TaskState| self.tasks.iter().any(|t| t.state == s);
        self.state = if worst(TaskState::Failed) {
            "failed"
        } else if worst(TaskState::Stalled) {
            "stalled"
        } else if worst(TaskState::Starting) || self.tasks.is_empty() {
            "starting"
        } else {
            "running"
        }
        .to_owned();
    }
}
