//! A native test harness: run a [`Processor`] with `cargo test`, without wasm,
//! Kafka or weir.
//!
//! The harness behaves like the host where it matters for logic: a record
//! whose processing fails leaves no store writes and no emits behind; emits to
//! outputs that were not declared fail; stores not granted cannot be opened;
//! table stores are read-only.
//!
//! ```
//! use weir_sdk::prelude::*;
//! use weir_sdk::testing::TestDriver;
//!
//! struct Upper;
//! impl Processor for Upper {
//!     fn process(&mut self, ctx: &mut Context, rec: Record) -> Result<()> {
//!         let text = std::str::from_utf8(rec.value().unwrap_or_default())?;
//!         ctx.emit("out", rec.key(), text.to_uppercase())
//!     }
//! }
//!
//! let mut driver = TestDriver::new(Upper).with_outputs(["out"]);
//! driver.process(Record::new("k", "hello")).unwrap();
//! assert_eq!(driver.emitted()[0].value.as_deref(), Some(&b"HELLO"[..]));
//! ```

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::rc::Rc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::{Codec, Json};
use crate::context::HostApi;
use crate::store::{RawStore, SharedRawStore};
use crate::{
    Config, Context, Emitted, Error, LogLevel, Processor, Punctuation, Record, Result, Store, TimeDomain, Timer,
};

/// Runs one processor natively against in-memory stores.
pub struct TestDriver<P: Processor> {
    processor: P,
    ctx: Context,
    shared: Rc<RefCell<Shared>>,
    config: Vec<(String, String)>,
    initialized: bool,
    emitted: Vec<Emitted>,
    next_offset: i64,
}

/// State shared between the driver and the [`HostApi`] it gives the context.
#[derive(Default)]
struct Shared {
    stores: HashMap<String, Rc<RefCell<MemoryStore>>>,
    schedules: HashMap<Punctuation, u64>,
    stream_time: i64,
    wall_clock: i64,
    partition: u32,
    logs: Vec<(LogLevel, String)>,
    /// Pending timers, in firing order: (domain, time, key).
    timers: std::collections::BTreeSet<(TimeDomain, i64, Vec<u8>)>,
    /// The timers as they were when the current call began (a failed call
    /// sets none).
    timers_before_call: std::collections::BTreeSet<(TimeDomain, i64, Vec<u8>)>,
}

impl<P: Processor> TestDriver<P> {
    /// A driver for `processor`; declare its stores and outputs with the
    /// `with_*` methods.
    pub fn new(processor: P) -> Self {
        let shared = Rc::new(RefCell::new(Shared::default()));
        let ctx = Context::new(Box::new(HarnessHost(shared.clone())), None);
        TestDriver {
            processor,
            ctx,
            shared,
            config: Vec::new(),
            initialized: false,
            emitted: Vec::new(),
            next_offset: 0,
        }
    }

    /// Adds a `config` entry passed to `init`.
    pub fn with_config(mut self, key: &str, value: &str) -> Self {
        self.config.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Grants a writable store.
    pub fn with_store(self, name: &str) -> Self {
        self.grant(name, false)
    }

    /// Grants a read-only store, as a table's store is for processors.
    pub fn with_table_store(self, name: &str) -> Self {
        self.grant(name, true)
    }

    fn grant(self, name: &str, read_only: bool) -> Self {
        let store = MemoryStore { read_only, ..MemoryStore::default() };
        self.shared.borrow_mut().stores.insert(name.to_owned(), Rc::new(RefCell::new(store)));
        self
    }

    /// Declares the processor's outputs; emitting elsewhere then fails, as in weir.
    pub fn with_outputs<const N: usize>(mut self, outputs: [&str; N]) -> Self {
        let outputs = outputs.iter().map(|s| (*s).to_owned()).collect();
        self.ctx = Context::new(Box::new(HarnessHost(self.shared.clone())), Some(outputs));
        self
    }

    /// Sets the task partition the processor sees.
    pub fn with_partition(self, partition: u32) -> Self {
        self.shared.borrow_mut().partition = partition;
        self
    }

    /// Calls `init` (done automatically before the first record otherwise).
    pub fn init(&mut self) -> Result<()> {
        self.initialized = true;
        let config = Config::new(self.config.clone());
        let mark = self.begin_call();
        let result = self.processor.init(&mut self.ctx, &config);
        self.end_call(result, mark)
    }

    fn ensure_init(&mut self) -> Result<()> {
        if self.initialized { Ok(()) } else { self.init() }
    }

    /// Processes one record. Offsets are assigned in order when left at 0;
    /// stream time advances to the record's timestamp. On error, the record's
    /// writes, timers and emits are rolled back and the error returned. When
    /// the record advanced stream time, the stream-time timers it made due
    /// fire right after it, as on weir.
    pub fn process(&mut self, mut record: Record) -> Result<()> {
        self.ensure_init()?;
        let offset = if record.offset() == 0 { self.next_offset } else { record.offset() };
        self.next_offset = offset + 1;
        let advanced = {
            let mut shared = self.shared.borrow_mut();
            let advanced = record.timestamp() > shared.stream_time;
            shared.stream_time = shared.stream_time.max(record.timestamp());
            record.set_position(shared.partition, offset);
            advanced
        };
        self.ctx.set_current(0, record.timestamp());
        let mark = self.begin_call();
        let result = self.processor.process(&mut self.ctx, record);
        self.end_call(result, mark)?;
        if advanced {
            let now = self.shared.borrow().stream_time;
            self.fire_timers(TimeDomain::StreamTime, now)?;
        }
        Ok(())
    }

    /// Calls `on_timer` for every timer of `domain` due at `now`, in order
    /// of time, then key; each is gone once fired (also when it failed, as
    /// under the `skip` and `dead-letter` policies). Timers set by these
    /// calls at a time already reached wait for the next firing.
    pub fn fire_timers(&mut self, domain: TimeDomain, now: i64) -> Result<()> {
        let due: Vec<(TimeDomain, i64, Vec<u8>)> =
            self.shared.borrow().timers.iter().filter(|(d, at, _)| *d == domain && *at <= now).cloned().collect();
        let mut first_error = Ok(());
        for timer in due {
            self.shared.borrow_mut().timers.remove(&timer);
            let (domain, timestamp, key) = timer;
            self.ctx.set_current(0, timestamp);
            let mark = self.begin_call();
            let result = self.processor.on_timer(&mut self.ctx, Timer { domain, key, timestamp });
            if let Err(e) = self.end_call(result, mark)
                && first_error.is_ok()
            {
                first_error = Err(e);
            }
        }
        first_error
    }

    /// The timers set and not yet fired, in firing order.
    pub fn timers(&self) -> Vec<Timer> {
        let shared = self.shared.borrow();
        shared
            .timers
            .iter()
            .map(|(domain, at, key)| Timer { domain: *domain, key: key.clone(), timestamp: *at })
            .collect()
    }

    /// Starts a call: where to roll emits and timers back to.
    fn begin_call(&mut self) -> (usize, usize, usize) {
        let mut shared = self.shared.borrow_mut();
        shared.timers_before_call = shared.timers.clone();
        self.ctx.output().mark()
    }

    /// Processes records in order, stopping at the first error.
    pub fn process_all(&mut self, records: impl IntoIterator<Item = Record>) -> Result<()> {
        records.into_iter().try_for_each(|r| self.process(r))
    }

    /// Calls `punctuate` as the host would when a schedule is due.
    pub fn punctuate(&mut self, kind: Punctuation, timestamp: i64) -> Result<()> {
        self.ensure_init()?;
        self.ctx.set_current(0, timestamp);
        let mark = self.begin_call();
        let result = self.processor.punctuate(&mut self.ctx, kind, timestamp);
        self.end_call(result, mark)
    }

    /// Ends a call like the host does: on error nothing of it remains.
    fn end_call(&mut self, result: Result<()>, mark: (usize, usize, usize)) -> Result<()> {
        let ok = result.is_ok();
        if !ok {
            self.ctx.output().truncate(mark);
            let mut shared = self.shared.borrow_mut();
            shared.timers = std::mem::take(&mut shared.timers_before_call);
        }
        let ended = self.ctx.end_call(ok);
        let names = self.ctx.output_names().to_vec();
        let out = self.ctx.output();
        for e in &out.records {
            let headers = &out.headers[e.headers.0 as usize..(e.headers.0 + e.headers.1) as usize];
            self.emitted.push(Emitted {
                output: names[e.output as usize].clone(),
                key: e.key.map(|s| out.bytes(s).to_vec()),
                value: e.value.map(|s| out.bytes(s).to_vec()),
                timestamp: e.timestamp,
                headers: headers.iter().map(|(n, s)| (n.clone(), out.bytes(*s).to_vec())).collect(),
            });
        }
        out.clear();
        result?;
        ended.map_err(|(store, e)| e.context(format_args!("store `{store}`")))
    }

    /// Sets the simulated wall clock seen by the processor, and fires the
    /// wall-clock timers due by then.
    pub fn set_wall_clock(&mut self, millis: i64) -> Result<()> {
        self.shared.borrow_mut().wall_clock = millis;
        self.fire_timers(TimeDomain::WallClock, millis)
    }

    /// The schedules the processor has asked for (kind → interval in ms).
    pub fn schedules(&self) -> HashMap<Punctuation, u64> {
        self.shared.borrow().schedules.clone()
    }

    /// Everything emitted so far, in order.
    pub fn emitted(&self) -> &[Emitted] {
        &self.emitted
    }

    /// Everything emitted to `output` so far.
    pub fn emitted_to(&self, output: &str) -> Vec<&Emitted> {
        self.emitted.iter().filter(|e| e.output == output).collect()
    }

    /// Takes (and clears) everything emitted so far.
    pub fn take_emitted(&mut self) -> Vec<Emitted> {
        std::mem::take(&mut self.emitted)
    }

    /// Log lines written by the processor.
    pub fn logs(&self) -> Vec<(LogLevel, String)> {
        self.shared.borrow().logs.clone()
    }

    /// A typed view of a granted store, to seed it or check it. Writes made
    /// through it take effect at once.
    pub fn store<K, V>(&self, name: &str) -> Store<K, V, Json>
    where
        V: Serialize + DeserializeOwned,
    {
        self.store_with::<K, V, Json>(name)
    }

    /// Like [`store`](Self::store) with another value codec.
    pub fn store_with<K, V, C>(&self, name: &str) -> Store<K, V, C>
    where
        V: Serialize + DeserializeOwned,
        C: Codec,
    {
        let raw = self.shared.borrow().stores.get(name).cloned();
        let raw: std::result::Result<SharedRawStore, String> = match raw {
            Some(store) => Ok(Rc::new(RefCell::new(Seeder(store, None)))),
            None => Err(format!("store `{name}` was not granted to the harness (use with_store)")),
        };
        Store::new(Rc::from(name), raw)
    }
}

struct HarnessHost(Rc<RefCell<Shared>>);

impl HostApi for HarnessHost {
    fn open_store(&mut self, name: &str) -> std::result::Result<SharedRawStore, String> {
        match self.0.borrow().stores.get(name) {
            Some(store) => Ok(store.clone()),
            None => Err(format!("store `{name}` is not granted to this processor")),
        }
    }
    fn task_id(&self) -> String {
        format!("test/0-{}", self.0.borrow().partition)
    }
    fn processor_name(&self) -> String {
        "test".to_owned()
    }
    fn partition(&self) -> u32 {
        self.0.borrow().partition
    }
    fn stream_time(&self) -> i64 {
        self.0.borrow().stream_time
    }
    fn wall_clock_time(&self) -> i64 {
        self.0.borrow().wall_clock
    }
    fn schedule(&mut self, kind: Punctuation, interval_ms: u64) -> Result<()> {
        let mut shared = self.0.borrow_mut();
        if interval_ms == 0 {
            shared.schedules.remove(&kind);
        } else {
            shared.schedules.insert(kind, interval_ms);
        }
        Ok(())
    }
    fn timer(&mut self, set: bool, domain: TimeDomain, key: &[u8], at: i64, _input_index: u32) -> Result<()> {
        let timer = (domain, at, key.to_vec());
        let mut shared = self.0.borrow_mut();
        if set {
            shared.timers.insert(timer);
        } else {
            shared.timers.remove(&timer);
        }
        Ok(())
    }
    fn log(&mut self, level: LogLevel, message: &str) {
        self.0.borrow_mut().logs.push((level, message.to_owned()));
    }
}

/// An in-memory store whose writes during a call can be rolled back.
#[derive(Default)]
struct MemoryStore {
    data: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Previous values of keys written during the current call.
    undo: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    read_only: bool,
}

impl RawStore for MemoryStore {
    fn get(&mut self, key: &[u8]) -> Result<Option<&[u8]>> {
        Ok(self.data.get(key).map(Vec::as_slice))
    }

    fn write(&mut self, key: &[u8], value: Option<Vec<u8>>) -> Result<()> {
        if self.read_only {
            return Err(Error::msg("store is read-only for this processor (a table's store)"));
        }
        let previous = match value {
            Some(v) => self.data.insert(key.to_vec(), v),
            None => self.data.remove(key),
        };
        self.undo.push((key.to_vec(), previous));
        Ok(())
    }

    fn range(&mut self, start: Option<&[u8]>, end: Option<&[u8]>, limit: u32) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let lower = start.map_or(Bound::Unbounded, Bound::Included);
        let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
        Ok(self
            .data
            .range::<[u8], _>((lower, upper))
            .take(limit as usize)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn end_call(&mut self, success: bool) -> Result<()> {
        if !success {
            while let Some((key, previous)) = self.undo.pop() {
                match previous {
                    Some(v) => self.data.insert(key, v),
                    None => self.data.remove(&key),
                };
            }
        }
        self.undo.clear();
        Ok(())
    }
}

/// Direct access for tests seeding or checking a store: bypasses read-only.
struct Seeder(Rc<RefCell<MemoryStore>>, Option<Vec<u8>>);

impl RawStore for Seeder {
    fn get(&mut self, key: &[u8]) -> Result<Option<&[u8]>> {
        self.1 = self.0.borrow().data.get(key).cloned();
        Ok(self.1.as_deref())
    }
    fn write(&mut self, key: &[u8], value: Option<Vec<u8>>) -> Result<()> {
        let mut store = self.0.borrow_mut();
        match value {
            Some(v) => store.data.insert(key.to_vec(), v),
            None => store.data.remove(key),
        };
        Ok(())
    }
    fn range(&mut self, start: Option<&[u8]>, end: Option<&[u8]>, limit: u32) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.0.borrow_mut().range(start, end, limit)
    }
    fn end_call(&mut self, _success: bool) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prelude::*;

    #[derive(Deserialize, Serialize)]
    struct Order {
        product_id: String,
        qty: i64,
    }

    /// The reservation logic of the design document.
    struct Reserve;
    impl Processor for Reserve {
        fn process(&mut self, ctx: &mut Context, rec: Record) -> Result<()> {
            let order: Order = rec.json()?;
            let stock = ctx.store::<String, i64>("stock");
            let left = stock.get(&order.product_id)?.unwrap_or(0);
            if left >= order.qty {
                stock.put(&order.product_id, &(left - order.qty))?;
                ctx.emit_json("validated", rec.key(), &order)?;
            } else {
                ctx.emit_json("rejected", rec.key(), &order)?;
            }
            Ok(())
        }
    }

    #[test]
    fn reserves_only_what_is_left() {
        let mut d = TestDriver::new(Reserve).with_store("stock").with_outputs(["validated", "rejected"]);
        d.store::<String, i64>("stock").put("p1", &5).unwrap();
        for qty in [3, 3, 2] {
            d.process(Record::from_json("o", &Order { product_id: "p1".into(), qty })).unwrap();
        }
        let outputs: Vec<&str> = d.emitted().iter().map(|e| e.output.as_str()).collect();
        assert_eq!(outputs, ["validated", "rejected", "validated"]);
        assert_eq!(d.store::<String, i64>("stock").get("p1").unwrap(), Some(0));
    }

    #[test]
    fn a_failing_record_leaves_no_writes_and_no_emits() {
        struct WriteThenFail;
        impl Processor for WriteThenFail {
            fn process(&mut self, ctx: &mut Context, rec: Record) -> Result<()> {
                let s = ctx.store::<String, i64>("s");
                s.put("k", &1)?;
                ctx.emit("out", rec.key(), "x")?;
                if rec.value() == Some(b"bad") {
                    bail!("bad record");
                }
                Ok(())
            }
        }
        let mut d = TestDriver::new(WriteThenFail).with_store("s").with_outputs(["out"]);
        let err = d.process(Record::new("a", "bad")).unwrap_err();
        assert_eq!(err.message(), "bad record");
        assert!(d.emitted().is_empty());
        assert_eq!(d.store::<String, i64>("s").get("k").unwrap(), None);
        d.process(Record::new("a", "good")).unwrap();
        assert_eq!(d.emitted().len(), 1);
        assert_eq!(d.store::<String, i64>("s").get("k").unwrap(), Some(1));
    }

    #[test]
    fn a_json_record_with_its_own_timestamp_and_headers_is_emitted_as_built() {
        struct Stamp;
        impl Processor for Stamp {
            fn process(&mut self, ctx: &mut Context, rec: Record) -> Result<()> {
                let out = crate::Emitted::new_json("out", rec.key(), &serde_json::json!({ "seen": true }))?
                    .at(rec.timestamp() + 5)
                    .with_header("source", "stamp");
                ctx.emit_record(out)
            }
        }
        let mut d = TestDriver::new(Stamp).with_outputs(["out"]);
        d.process(Record::new("k", "v").at(10)).unwrap();
        let e = &d.emitted()[0];
        assert_eq!((e.timestamp, e.headers.clone()), (15, vec![("source".to_owned(), b"stamp".to_vec())]));
        assert_eq!(e.json::<serde_json::Value>().unwrap(), serde_json::json!({ "seen": true }));
    }

    #[test]
    fn undeclared_outputs_ungranted_stores_and_table_writes_fail() {
        struct Misuse;
        impl Processor for Misuse {
            fn process(&mut self, ctx: &mut Context, rec: Record) -> Result<()> {
                match rec.value() {
                    Some(b"emit") => ctx.emit("nowhere", (), ()),
                    Some(b"store") => ctx.store::<String, i64>("secret").put("k", &1),
                    _ => ctx.store::<String, i64>("table").put("k", &1),
                }
            }
        }
        let mut d = TestDriver::new(Misuse).with_outputs(["out"]).with_table_store("table");
        let e = d.process(Record::new("k", "emit")).unwrap_err();
        assert!(e.message().contains("output `nowhere` is not declared"), "{e}");
        let e = d.process(Record::new("k", "store")).unwrap_err();
        assert!(e.message().contains("store `secret` is not granted"), "{e}");
        let e = d.process(Record::new("k", "table")).unwrap_err();
        assert!(e.message().contains("read-only"), "{e}");
    }

    #[test]
    fn scans_page_through_large_stores_in_key_order() {
        struct Noop;
        impl Processor for Noop {
            fn process(&mut self, _: &mut Context, _: Record) -> Result<()> {
                Ok(())
            }
        }
        let d = TestDriver::new(Noop).with_store("s");
        let s = d.store::<u32, u32>("s");
        for i in (0..1000u32).rev() {
            s.put(&i, &(i * 2)).unwrap();
        }
        let all = s.all().unwrap();
        assert_eq!(all.len(), 1000);
        assert!(all.iter().enumerate().all(|(i, (k, v))| *k == i as u32 && *v == 2 * i as u32));
        let some = s.range(Some(&10), Some(&20)).unwrap();
        assert_eq!(some.first().map(|e| e.0), Some(10));
        assert_eq!(some.len(), 10);
        let t = d.store::<String, i64>("s");
        let _ = t; // text keys share the same bytes space; prefix checked below
        let p = TestDriver::new(Noop).with_store("p");
        let ps = p.store::<String, i64>("p");
        for k in ["a1", "a2", "b1", "a3"] {
            ps.put(k, &1).unwrap();
        }
        let keys: Vec<String> = ps.prefix("a").unwrap().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["a1", "a2", "a3"]);
    }
}
