//! A tumbling-window count written the way a user of the 0.1.0 SDK writes
//! one by hand: windows of `size_ms` (default 60 s) per key, kept in the
//! store `windows` (config `store` names another) under `<window start, zero-padded>|<key>`; a window
//! closes when stream time passes its end plus `grace_ms` (default 10 s),
//! checked by a stream-time punctuation every `close_every_ms` (default
//! 10 s), and is then emitted once to `counts` as
//! `{"key", "start", "count"}`. A record whose window has already closed
//! (`end + grace <= stream time`, Kafka Streams' rule) goes to `late`.
//!
//! It reads stream time in `process` and relies on punctuation: the guest of
//! the batch-invariance tests, whose output must not depend on how its
//! input was batched.

use std::time::Duration;

use weir_sdk::prelude::*;

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct WindowCount {
    pub key: String,
    pub start: i64,
    pub count: i64,
}

pub struct WindowedCount {
    size: i64,
    grace: i64,
    store: String,
}

impl Default for WindowedCount {
    fn default() -> Self {
        WindowedCount { size: 60_000, grace: 10_000, store: "windows".into() }
    }
}

fn window_key(start: i64, key: &str) -> String {
    format!("{start:020}|{key}")
}

impl Processor for WindowedCount {
    fn init(&mut self, ctx: &mut Context, config: &Config) -> Result<()> {
        self.size = config.parse("size_ms")?.unwrap_or(60_000);
        self.grace = config.parse("grace_ms")?.unwrap_or(10_000);
        self.store = config.get("store").unwrap_or("windows").to_owned();
        let every = config.parse("close_every_ms")?.unwrap_or(10_000u64);
        ctx.schedule(Punctuation::StreamTime, Duration::from_millis(every))
    }

    fn process(&mut self, ctx: &mut Context, rec: Record) -> Result<()> {
        let key =
            String::from_utf8_lossy(rec.key().ok_or_else(|| Error::msg("windowed-count needs keys"))?).into_owned();
        let start = rec.timestamp() - rec.timestamp().rem_euclid(self.size);
        if start + self.size + self.grace <= ctx.stream_time() {
            return ctx.forward("late", &rec);
        }
        let windows = ctx.store::<String, i64>(&self.store);
        let k = window_key(start, &key);
        let count = windows.get(&k)?.unwrap_or(0) + 1;
        windows.put(&k, &count)
    }

    fn punctuate(&mut self, ctx: &mut Context, _kind: Punctuation, now: i64) -> Result<()> {
        // Windows with start + size + grace <= now are closed.
        let bound = now - self.size - self.grace + 1;
        if bound <= 0 {
            return Ok(());
        }
        let windows = ctx.store::<String, i64>(&self.store);
        let closed = windows.range(None, Some(&window_key(bound, "")))?;
        for (k, count) in closed {
            windows.delete(&k)?;
            let (start, key) = k.split_once('|').expect("window key");
            let out = WindowCount { key: key.to_owned(), start: start.parse().expect("start"), count };
            ctx.emit_json("counts", key, &out)?;
        }
        Ok(())
    }
}

export_processor!(WindowedCount::default());
