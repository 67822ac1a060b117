//! Stream–stream joins within a time window (Kafka Streams' `JoinWindows`):
//! inner, left and outer, with grace.
//!
//! Both streams reach one processor (co-partitioned: the same key on the
//! same partition, which weir checks); it tells them apart by
//! [`Record::source`] and hands each record to [`StreamJoin::add_left`] or
//! [`StreamJoin::add_right`]. Each side keeps its records in a store of its
//! own, keyed by (key, timestamp, offset, n), for as long as a record of the
//! other side can still join it; one stream-time timer per record removes it
//! then and, for left and outer joins, emits it unmatched if nothing joined
//! it.
//!
//! **The rules**: a left record at `l` and a right record at `r` of the same
//! key join when `|l - r| <= window`; a record is late, and joins nothing,
//! when `timestamp + window + grace <= stream time` (every record it could
//! join has been let go by then). A record is let go, and a left (outer:
//! any) record that joined nothing is emitted unmatched, when stream time
//! reaches `timestamp + 2 × window + grace`: until then a partner up to
//! `window` later than it may still arrive without being late. (Weir's
//! rule; Kafka Streams keeps records as long, before + after + grace.) A
//! joined result is emitted as soon as its second record arrives, with the
//! larger of the two timestamps; an unmatched one with its own.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::{KeyDecode, KeyEncode};
use crate::windows::LateRecords;
use crate::{Context, Emitted, Error, Record, Result, TimeDomain, Timer};

const TIMER_PREFIX: &[u8] = b"\xffweir.join\x00";

/// How far apart in event time two records may be and still join.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JoinWindows {
    window: i64,
    grace: i64,
}

impl JoinWindows {
    /// Records at most `window` apart (before or after) join.
    pub fn of(window: Duration) -> Self {
        JoinWindows { window: i64::try_from(window.as_millis()).unwrap_or(i64::MAX), grace: 0 }
    }

    pub fn grace(self, grace: Duration) -> Self {
        JoinWindows { grace: i64::try_from(grace.as_millis()).unwrap_or(i64::MAX), ..self }
    }

    /// From then on a record at `timestamp` is late.
    fn late_at(&self, timestamp: i64) -> i64 {
        timestamp.saturating_add(self.window).saturating_add(self.grace)
    }

    /// When a record at `timestamp` is let go: no partner can come after.
    fn closes_at(&self, timestamp: i64) -> i64 {
        self.late_at(timestamp).saturating_add(self.window)
    }
}

/// A waiting record's place in its store: key, timestamp, offset of its
/// input record, and a number telling apart records with all three equal
/// (derived from one input record, or emitted by a punctuation).
type RecordId = (String, i64, i64, u32);

/// Which records without a partner are emitted (when their window closes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinKind {
    /// None: only joined pairs.
    Inner,
    /// Left records that joined nothing.
    Left,
    /// Records of either side that joined nothing.
    Outer,
}

/// A record waiting in its side's store.
#[derive(Serialize, serde::Deserialize)]
struct Pending<V> {
    value: V,
    matched: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Left,
    Right,
}

/// A windowed join of two streams.
#[derive(Clone, Debug)]
pub struct StreamJoin {
    left_store: String,
    right_store: String,
    windows: JoinWindows,
    kind: JoinKind,
    output: String,
    unmatched_output: Option<String>,
    late: LateRecords,
}

type Joiner<'a, L, R, O> = &'a dyn Fn(Option<&L>, Option<&R>) -> O;

impl StreamJoin {
    /// A join keeping left records in `left_store` and right ones in
    /// `right_store` (plain stores of the processor), emitting to `joined`.
    pub fn new(left_store: &str, right_store: &str, windows: JoinWindows, kind: JoinKind) -> Self {
        StreamJoin {
            left_store: left_store.to_owned(),
            right_store: right_store.to_owned(),
            windows,
            kind,
            output: "joined".to_owned(),
            unmatched_output: None,
            late: LateRecords::default(),
        }
    }

    /// Where joined pairs go.
    pub fn to(self, output: &str) -> Self {
        StreamJoin { output: output.to_owned(), ..self }
    }

    /// Where unmatched records go (left and outer joins; default: with the pairs).
    pub fn unmatched_to(self, output: &str) -> Self {
        StreamJoin { unmatched_output: Some(output.to_owned()), ..self }
    }

    /// Late records go, unchanged, to `output` (default: dropped and counted).
    pub fn late_to(self, output: &str) -> Self {
        StreamJoin { late: LateRecords::to(output), ..self }
    }

    /// Late records dropped by this instance (not kept across restarts).
    pub fn late(&self) -> u64 {
        self.late.dropped()
    }

    /// A left record, its value read as `L`: joins it with the right
    /// records in its window (`joiner(Some(left), Some(right))` for each,
    /// emitted at once) and keeps it for those still to come.
    pub fn add_left<L, R, O>(&mut self, ctx: &mut Context, record: &Record, joiner: Joiner<'_, L, R, O>) -> Result<()>
    where
        L: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
        O: Serialize,
    {
        let (mine, theirs) = (self.left_store.clone(), self.right_store.clone());
        self.add::<L, R, O>(ctx, record, Side::Left, &mine, &theirs, &|l, r| joiner(Some(l), Some(r)))
    }

    /// A right record: as [`add_left`](Self::add_left), the other way round.
    pub fn add_right<L, R, O>(&mut self, ctx: &mut Context, record: &Record, joiner: Joiner<'_, L, R, O>) -> Result<()>
    where
        L: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
        O: Serialize,
    {
        let (mine, theirs) = (self.right_store.clone(), self.left_store.clone());
        self.add::<R, L, O>(ctx, record, Side::Right, &mine, &theirs, &|r, l| joiner(Some(l), Some(r)))
    }

    /// Joins a record of one side (`M`, kept in `mine`) with the other
    /// side's (`T`, in `theirs`), `pair(mine, theirs)` giving the result.
    #[allow(clippy::too_many_arguments)]
    fn add<M, T, O>(
        &mut self,
        ctx: &mut Context,
        record: &Record,
        side: Side,
        mine: &str,
        theirs: &str,
        pair: &dyn Fn(&M, &T) -> O,
    ) -> Result<()>
    where
        M: Serialize + DeserializeOwned,
        T: Serialize + DeserializeOwned,
        O: Serialize,
    {
        let ts = record.timestamp();
        if self.windows.late_at(ts) <= ctx.stream_time() {
            self.late.take(ctx, record)?;
            return Ok(());
        }
        let key = record.key_str()?.to_owned();
        let value: M = record.json()?;
        let from = (key.clone(), ts - self.windows.window, i64::MIN, 0);
        let to = (key.clone(), ts + self.windows.window + 1, i64::MIN, 0);
        let others = ctx.store::<RecordId, Pending<T>>(theirs);
        let mut matched = false;
        for (k, mut other) in others.range(Some(&from), Some(&to))? {
            let joined = Emitted::new_json(&self.output, key.as_str(), &pair(&value, &other.value))?;
            ctx.emit_record(joined.at(ts.max(k.1)))?;
            if !other.matched {
                other.matched = true;
                others.put(&k, &other)?;
            }
            matched = true;
        }
        let ours = ctx.store::<RecordId, Pending<M>>(mine);
        let mut id = (key, ts, record.offset(), 0);
        while ours.get(&id)?.is_some() {
            id.3 += 1;
        }
        ours.put(&id, &Pending { value, matched })?;
        ctx.set_timer(TimeDomain::StreamTime, self.timer_key(side, &id), self.windows.closes_at(ts))
    }

    /// Call from [`Processor::on_timer`](crate::Processor::on_timer): when
    /// `timer` is this join's, its record's window has closed: the record is
    /// forgotten, and emitted as `joiner(Some(left), None)` (or `(None,
    /// Some(right))`) if it joined nothing and the join kind says so.
    /// Returns whether the timer was this join's.
    pub fn on_timer<L, R, O>(&mut self, ctx: &mut Context, timer: &Timer, joiner: Joiner<'_, L, R, O>) -> Result<bool>
    where
        L: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
        O: Serialize,
    {
        let Some((side, id)) = self.parse_timer_key(&timer.key) else { return Ok(false) };
        let unmatched = self.unmatched_output.clone().unwrap_or_else(|| self.output.clone());
        match side {
            Side::Left => {
                let store = ctx.store::<RecordId, Pending<L>>(&self.left_store);
                let pending = store.get(&id)?.ok_or_else(|| missing(&self.left_store, &id))?;
                store.delete(&id)?;
                if !pending.matched && self.kind != JoinKind::Inner {
                    let value = joiner(Some(&pending.value), None);
                    ctx.emit_record(Emitted::new_json(&unmatched, id.0.as_str(), &value)?.at(id.1))?;
                }
            }
            Side::Right => {
                let store = ctx.store::<RecordId, Pending<R>>(&self.right_store);
                let pending = store.get(&id)?.ok_or_else(|| missing(&self.right_store, &id))?;
                store.delete(&id)?;
                if !pending.matched && self.kind == JoinKind::Outer {
                    let value = joiner(None, Some(&pending.value));
                    ctx.emit_record(Emitted::new_json(&unmatched, id.0.as_str(), &value)?.at(id.1))?;
                }
            }
        }
        Ok(true)
    }

    fn timer_key(&self, side: Side, id: &RecordId) -> Vec<u8> {
        let mut k = TIMER_PREFIX.to_vec();
        let store = if side == Side::Left { &self.left_store } else { &self.right_store };
        k.extend_from_slice(store.as_bytes());
        k.push(0);
        id.encode_key(&mut k);
        k
    }

    fn parse_timer_key(&self, key: &[u8]) -> Option<(Side, RecordId)> {
        let rest = key.strip_prefix(TIMER_PREFIX)?;
        let (side, rest) =
            if let Some(r) = rest.strip_prefix(self.left_store.as_bytes()).and_then(|r| r.strip_prefix(&[0])) {
                (Side::Left, r)
            } else {
                (Side::Right, rest.strip_prefix(self.right_store.as_bytes())?.strip_prefix(&[0])?)
            };
        Some((side, RecordId::decode_key(rest).ok()?))
    }
}

fn missing(store: &str, id: &RecordId) -> Error {
    Error::msg(format!("join store `{store}` has a timer for ({}, {}, {}, {}) but no record", id.0, id.1, id.2, id.3))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Processor;
    use crate::testing::TestDriver;

    struct Join(StreamJoin);

    fn pair(l: Option<&String>, r: Option<&String>) -> String {
        format!("{}+{}", l.map_or("-", String::as_str), r.map_or("-", String::as_str))
    }

    impl Processor for Join {
        fn process(&mut self, ctx: &mut Context, rec: Record) -> Result<()> {
            match rec.source() {
                Some("left") => self.0.add_left::<String, String, String>(ctx, &rec, &pair),
                _ => self.0.add_right::<String, String, String>(ctx, &rec, &pair),
            }
        }
        fn on_timer(&mut self, ctx: &mut Context, timer: Timer) -> Result<()> {
            self.0.on_timer::<String, String, String>(ctx, &timer, &pair)?;
            Ok(())
        }
    }

    fn side(source: &str, key: &str, value: &str, ts: i64) -> Record {
        Record::from_json(key, &value).at(ts).from_source(source)
    }

    /// Pairs and unmatched records of one run of `kind`, in emit order.
    fn run(kind: JoinKind) -> Vec<String> {
        let windows = JoinWindows::of(Duration::from_secs(10)).grace(Duration::from_secs(2));
        let join = StreamJoin::new("l", "r", windows, kind).to("out");
        let mut d = TestDriver::new(Join(join)).with_store("l").with_store("r").with_outputs(["out"]);
        for r in [
            side("left", "k", "l1", 0),
            side("right", "k", "r1", 10_000),   // exactly the window: joins l1
            side("right", "j", "r2", 11_000),   // no left j
            side("left", "k", "l2", 21_000),    // 11 s after r1: joins nothing
            side("right", "z", "tick", 50_000), // lets go of every record (l2 at 21 + 20 + 2 s)
            side("left", "k", "late", 1_000),   // late from 13 s on
        ] {
            d.process(r).unwrap();
        }
        d.emitted_to("out").iter().map(|e| e.json::<String>().unwrap()).collect()
    }

    #[test]
    fn inner_left_and_outer_joins_differ_only_in_their_unmatched_records() {
        assert_eq!(run(JoinKind::Inner), vec!["l1+r1"]);
        assert_eq!(run(JoinKind::Left), vec!["l1+r1", "l2+-"]);
        assert_eq!(run(JoinKind::Outer), vec!["l1+r1", "-+r2", "l2+-"]);
    }
}
