//! Hot swap inside a task: a processor's new component version is
//! instantiated and initialised at a commit boundary, keeping the stores,
//! and stays on probation until its first commit with processed records;
//! a trap before then brings the previous version back.

use std::sync::Arc;

use super::time::Schedule;
use super::{AppRuntime, Task, TaskError};
use crate::wasm::{LoadedComponent, ProcessorInstance};

/// A component swap on probation: what to go back to if the new version
/// traps before its first commit.
pub(super) struct Probation {
    previous_app: Arc<AppRuntime>,
    /// Per swapped slot: previous component, instance and schedules.
    pub(super) previous: Vec<SavedProcessor>,
    /// The new version has processed at least one batch.
    pub(super) processed: bool,
}

pub(super) struct SavedProcessor {
    pub(super) slot: usize,
    component: Arc<LoadedComponent>,
    instance: Option<ProcessorInstance>,
    stream_schedule: Option<Schedule>,
    wall_schedule: Option<Schedule>,
}

impl Task {
    /// True while a swapped component version has not yet committed work.
    pub fn in_probation(&self) -> bool {
        self.probation.is_some()
    }

    /// True when `slot` runs a version swapped in and still on probation.
    pub(super) fn is_new_version(&self, slot: usize) -> bool {
        self.probation.as_ref().is_some_and(|p| p.previous.iter().any(|s| s.slot == slot))
    }

    /// Hot swap, at a commit boundary (nothing uncommitted): every processor
    /// whose component, config or limits differ in `app` gets a new instance,
    /// instantiated from its precompiled form and initialised now; stores are
    /// kept. If any `init` fails, nothing changes and the error says why.
    /// The new version is on probation until its first commit with
    /// processed records: a trap before then fails with
    /// [`TaskError::SwapFailed`], and [`rollback_swap`](Self::rollback_swap)
    /// brings the previous version back. `app` must have the same graph.
    /// Returns the names of the swapped processors.
    pub fn swap(&mut self, app: Arc<AppRuntime>) -> Result<Vec<String>, TaskError> {
        debug_assert!(!self.has_uncommitted(), "swap at a commit boundary");
        // A new swap accepts the one on probation, if any.
        self.probation = None;
        let time = self.call_time();
        let mut fresh = Vec::new();
        for slot in 0..self.processors.len() {
            let node = self.processors[slot].node;
            let old = self.app.topology.processor(node).expect("processor");
            let new = app.topology.processor(node).expect("same graph");
            let component = app.components.get(&node).expect("component per processor").clone();
            let changed = component.sha256() != self.processors[slot].component.sha256()
                || old.config != new.config
                || old.limits != new.limits;
            if !changed {
                continue;
            }
            let name = self.processors[slot].name.clone();
            let failed =
                |kind: &'static str, message: String| TaskError::SwapFailed { processor: name.clone(), kind, message };
            let mut instance = match ProcessorInstance::instantiate(
                &app.engine,
                component.clone(),
                self.processors[slot].info.clone(),
                new.limits,
            ) {
                Ok(i) => i,
                Err(e) => {
                    self.stores.rollback_to_savepoint();
                    return Err(failed("instantiate", e.message));
                }
            };
            match instance.init(&mut self.stores, time, &new.config) {
                Ok(ok) => fresh.push((slot, component, instance, ok)),
                Err(f) => {
                    self.stores.rollback_to_savepoint();
                    return Err(failed(f.kind.as_str(), format!("init failed: {}", f.message)));
                }
            }
        }
        self.stores.release_savepoint();
        let previous_app = std::mem::replace(&mut self.app, app);
        let mut previous = Vec::new();
        let mut names = Vec::new();
        for (slot, component, instance, ok) in fresh {
            let s = &mut self.processors[slot];
            names.push(s.name.clone());
            previous.push(SavedProcessor {
                slot,
                component: std::mem::replace(&mut s.component, component),
                instance: s.instance.replace(instance),
                stream_schedule: s.stream_schedule.take(),
                wall_schedule: s.wall_schedule.take(),
            });
            self.apply_schedules(slot, &ok.schedules, time.stream_time);
            self.route_init(slot, ok.emitted);
        }
        if !previous.is_empty() {
            self.probation = Some(Probation { previous_app, previous, processed: false });
        }
        Ok(names)
    }

    /// Brings back the version a swap replaced (after [`abort`](Self::abort)).
    /// False if no swap was on probation.
    pub fn rollback_swap(&mut self) -> bool {
        let Some(p) = self.probation.take() else { return false };
        self.app = p.previous_app;
        for saved in p.previous {
            let s = &mut self.processors[saved.slot];
            s.component = saved.component;
            s.instance = saved.instance;
            s.stream_schedule = saved.stream_schedule;
            s.wall_schedule = saved.wall_schedule;
        }
        true
    }
}
