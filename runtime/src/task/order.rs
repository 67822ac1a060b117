//! Timestamp order across a task's inputs (Kafka Streams' `PartitionGroup`
//! and `max.task.idle.ms`).
//!
//! A task that reads several input partitions (a stream and a table, two
//! streams, a repartition topic and a source) buffers what the driver hands
//! it, per partition, and processes next the buffered record with the
//! smallest timestamp (ties: the input declared first), so that a join sees
//! table updates and stream records in event-time order whatever order they
//! arrived in. Each partition's own order is kept.
//!
//! When a partition has nothing buffered, the task cannot know whether its
//! next record would come first, so it may wait:
//! - if the driver says the partition has records it has not delivered yet
//!   (`behind`: the log end is past what was read), it waits for them (the
//!   embedded backend knows; on Kafka log end offsets count transaction
//!   markers, so the Kafka worker never says so);
//! - if the partition is caught up, it waits up to `max_task_idle` of wall
//!   clock (0 by default: it goes on at once, as Kafka Streams does), then
//!   processes what it has, smallest timestamp first, until the partition
//!   has data again;
//! - a partition with more than [`MAX_BUFFERED`] records buffered ends any
//!   wait (the one starved of data would otherwise make the others grow
//!   without bound).
//!
//! Tasks with one input partition skip all of this: their records go
//! straight to processing.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use crate::record::ConsumedRecord;

/// Records buffered per input partition beyond which a task stops waiting.
pub const MAX_BUFFERED: usize = 10_000;

/// The buffered input of a task with several input partitions.
pub(super) struct InputQueues {
    /// Per input (in the order the sub-topology declares them).
    queues: Vec<VecDeque<ConsumedRecord>>,
    by_topic: BTreeMap<Arc<str>, usize>,
    /// Per input: records exist past what the driver delivered.
    behind: Vec<bool>,
    /// Since when (wall clock, ms) the task has waited for a caught-up input.
    idle_since: Option<i64>,
}

impl InputQueues {
    pub fn new(topics: impl Iterator<Item = Arc<str>>) -> Self {
        let by_topic: BTreeMap<Arc<str>, usize> = topics.enumerate().map(|(i, t)| (t, i)).collect();
        let n = by_topic.len();
        InputQueues { queues: vec![VecDeque::new(); n], by_topic, behind: vec![false; n], idle_since: None }
    }

    /// Buffers a record; hands it back when its topic is not an input.
    pub fn push(&mut self, record: ConsumedRecord) -> Result<(), ConsumedRecord> {
        match self.by_topic.get(&record.topic) {
            Some(&i) => {
                self.queues[i].push_back(record);
                Ok(())
            }
            None => Err(record),
        }
    }

    pub fn set_behind(&mut self, topic: &str, behind: bool) {
        if let Some(&i) = self.by_topic.get(topic) {
            self.behind[i] = behind;
        }
    }

    pub fn buffered(&self) -> usize {
        self.queues.iter().map(VecDeque::len).sum()
    }

    pub fn buffered_of(&self, topic: &str) -> usize {
        self.by_topic.get(topic).map_or(0, |&i| self.queues[i].len())
    }

    pub fn clear(&mut self) {
        self.queues.iter_mut().for_each(VecDeque::clear);
        self.idle_since = None;
    }

    /// The next record to process at wall clock `now`, if the task may go
    /// on: see the module docs. `force` ends every wait (nothing more will
    /// come: `weir test` at the end of its input).
    pub fn next(&mut self, now: i64, max_idle_ms: i64, force: bool) -> Option<ConsumedRecord> {
        let mut waiting_behind = false;
        let mut waiting_idle = false;
        for (q, behind) in self.queues.iter().zip(&self.behind) {
            if q.is_empty() {
                if *behind {
                    waiting_behind = true;
                } else {
                    waiting_idle = true;
                }
            }
        }
        let overflow = self.queues.iter().any(|q| q.len() > MAX_BUFFERED);
        if !waiting_behind && !waiting_idle {
            self.idle_since = None;
        } else if !force && !overflow {
            if waiting_behind {
                return None;
            }
            let since = *self.idle_since.get_or_insert(now);
            if now.saturating_sub(since) < max_idle_ms {
                return None;
            }
        }
        let (i, _) = self
            .queues
            .iter()
            .enumerate()
            .filter_map(|(i, q)| q.front().map(|r| (i, r.record.timestamp)))
            .min_by_key(|&(i, ts)| (ts, i))?;
        self.queues[i].pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Record;

    fn rec(topic: &str, offset: i64, ts: i64) -> ConsumedRecord {
        ConsumedRecord {
            topic: Arc::from(topic),
            partition: 0,
            offset,
            record: Record { key: None, value: None, timestamp: ts, headers: vec![] },
        }
    }

    fn drain(q: &mut InputQueues, now: i64, idle: i64) -> Vec<(String, i64)> {
        std::iter::from_fn(|| q.next(now, idle, false)).map(|r| (r.topic.to_string(), r.offset)).collect()
    }

    #[test]
    fn the_smallest_timestamp_goes_first_and_each_partition_keeps_its_order() {
        let mut q = InputQueues::new(["a", "b"].into_iter().map(Arc::from));
        for r in [rec("a", 0, 10), rec("a", 1, 5), rec("b", 0, 7), rec("b", 1, 20)] {
            q.push(r).unwrap();
        }
        // a@0 (10) waits behind b@0 (7); a@1 (5) keeps its place after a@0.
        assert_eq!(drain(&mut q, 0, 0), [("b".into(), 0), ("a".into(), 0), ("a".into(), 1), ("b".into(), 1)]);
        assert!(q.push(rec("c", 0, 1)).is_err(), "not an input");
    }

    #[test]
    fn an_empty_input_is_waited_for_when_behind_or_within_the_idle_time() {
        let mut q = InputQueues::new(["a", "b"].into_iter().map(Arc::from));
        q.push(rec("a", 0, 10)).unwrap();
        q.set_behind("b", true);
        assert!(drain(&mut q, 0, 0).is_empty(), "b has records not delivered yet");
        q.set_behind("b", false);
        assert!(drain(&mut q, 100, 500).is_empty(), "caught up: wait up to the idle time");
        assert!(drain(&mut q, 599, 500).is_empty());
        assert_eq!(drain(&mut q, 600, 500), [("a".into(), 0)]);
        // Data on b ends the wait; a later wait starts anew.
        q.push(rec("a", 1, 30)).unwrap();
        q.push(rec("b", 0, 20)).unwrap();
        assert_eq!(drain(&mut q, 700, 500), [("b".into(), 0)]);
        assert!(drain(&mut q, 1100, 500).is_empty());
        assert_eq!(q.next(1100, 500, true).map(|r| r.offset), Some(1), "force ends the wait");
    }

    #[test]
    fn a_full_buffer_ends_the_wait() {
        let mut q = InputQueues::new(["a", "b"].into_iter().map(Arc::from));
        q.set_behind("b", true);
        for i in 0..=MAX_BUFFERED as i64 {
            q.push(rec("a", i, i)).unwrap();
        }
        assert_eq!(q.next(0, 0, false).map(|r| r.offset), Some(0));
        assert_eq!(q.buffered_of("a"), MAX_BUFFERED);
        assert!(q.next(0, 0, false).is_none(), "back under the bound: it waits again");
    }
}
