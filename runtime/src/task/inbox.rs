//! A processor's pending input inside a task: the records waiting for its
//! next batch call, each with its origin.

use super::time::Origin;
use crate::record::TaskRecord;

/// A processor's pending input: `records[i]` comes from `origins[i]`. The
/// two lists are what a batch call takes, and their buffers are kept from
/// batch to batch (a batch of 1,000 records is ~130 KB of `TaskRecord`s:
/// regrown and split into two new lists per batch, it was copied three
/// times over).
#[derive(Default)]
pub(super) struct Inbox {
    origins: Vec<Origin>,
    records: Vec<TaskRecord>,
}

impl Inbox {
    pub(super) fn push(&mut self, origin: Origin, record: TaskRecord) {
        self.origins.push(origin);
        self.records.push(record);
    }

    pub(super) fn len(&self) -> usize {
        self.records.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub(super) fn clear(&mut self) {
        self.origins.clear();
        self.records.clear();
    }

    /// The pending input, in place order when `sort` (more than one
    /// upstream: arrival order is not place order). Stable, as place ties
    /// keep arrival order.
    pub(super) fn take(&mut self, sort: bool) -> (Vec<Origin>, Vec<TaskRecord>) {
        let (mut origins, mut records) = (std::mem::take(&mut self.origins), std::mem::take(&mut self.records));
        if sort && !origins.windows(2).all(|w| w[0].seq <= w[1].seq) {
            let mut pairs: Vec<(Origin, TaskRecord)> = origins.drain(..).zip(records.drain(..)).collect();
            pairs.sort_by_key(|(origin, _)| origin.seq);
            (origins, records) = pairs.into_iter().unzip();
        }
        (origins, records)
    }

    /// Takes back the lists [`take`](Self::take) handed out, emptied, for
    /// their buffers (unless input arrived meanwhile).
    pub(super) fn give_back(&mut self, mut origins: Vec<Origin>, mut records: Vec<TaskRecord>) {
        if self.is_empty() {
            origins.clear();
            records.clear();
            (self.origins, self.records) = (origins, records);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::time::Seq;

    fn record(offset: i64) -> TaskRecord {
        TaskRecord { offset, ..crate::task::empty_record() }
    }

    fn push(inbox: &mut Inbox, seq: u64, offset: i64) {
        inbox.push(Origin { seq: Seq::input(seq), stream_time: 0 }, record(offset));
    }

    #[test]
    fn take_sorts_by_place_keeping_arrival_order_among_ties_and_only_when_asked() {
        let mut inbox = Inbox::default();
        for (seq, offset) in [(3, 0), (1, 1), (3, 2), (2, 3)] {
            push(&mut inbox, seq, offset);
        }
        let (origins, records) = inbox.take(true);
        assert!(inbox.is_empty());
        assert_eq!(origins.iter().map(|o| o.seq.input).collect::<Vec<_>>(), [1, 2, 3, 3]);
        assert_eq!(records.iter().map(|r| r.offset).collect::<Vec<_>>(), [1, 3, 0, 2]);
        for (seq, offset) in [(3, 0), (1, 1)] {
            push(&mut inbox, seq, offset);
        }
        let (_, records) = inbox.take(false);
        assert_eq!(records.iter().map(|r| r.offset).collect::<Vec<_>>(), [0, 1]);
    }

    #[test]
    fn give_back_keeps_the_buffers_empty_unless_input_arrived_meanwhile() {
        let mut inbox = Inbox::default();
        for i in 0..100 {
            push(&mut inbox, i, i as i64);
        }
        let (origins, records) = inbox.take(false);
        inbox.give_back(origins, records);
        assert!(inbox.is_empty());
        assert!(inbox.records.capacity() >= 100 && inbox.origins.capacity() >= 100);

        let (origins, records) = inbox.take(false);
        push(&mut inbox, 7, 7);
        inbox.give_back(origins, records);
        assert_eq!(inbox.len(), 1);
        inbox.clear();
        assert!(inbox.is_empty());
    }
}
