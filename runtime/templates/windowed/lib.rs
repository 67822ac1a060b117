//! {{name}}: a windowed weir processor. It counts records per key in
//! tumbling windows of `size_ms` (config, default 60 s) of event time, and
//! emits each window's count once, when stream time has passed the window's
//! end plus `grace_ms` (default 10 s); later records for a closed window go
//! to the output `late`. Windows live in the store `windows` under
//! `<start, zero-padded>|<key>`, so a range scan finds the closed ones; a
//! stream-time punctuation every `size_ms` closes them (see the SDK README's
//! "Time" chapter for when it fires).

use std::time::Duration;

use weir_sdk::prelude::*;

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct WindowCount {
    pub key: String,
    pub start: i64,
    pub end: i64,
    pub count: i64,
}

pub struct Windowed {
    size: i64,
    grace: i64,
}

impl Default for Windowed {
    fn default() -> Self {
        Windowed { size: 60_000, grace: 10_000 }
    }
}

fn window_key(start: i64, key: &str) -> String {
    format!("{start:020}|{key}")
}

impl Processor for Windowed {
    fn init(&mut self, ctx: &mut Context, config: &Config) -> Result<()> {
        self.size = config.parse("size_ms")?.unwrap_or(60_000);
        self.grace = config.parse("grace_ms")?.unwrap_or(10_000);
        ctx.schedule(Punctuation::StreamTime, Duration::from_millis(self.size as u64))
    }

    fn process(&mut self, ctx: &mut Context, rec: Record) -> Result<()> {
        let key = rec.key_str()?.to_owned();
        let start = rec.timestamp() - rec.timestamp().rem_euclid(self.size);
        if start + self.size + self.grace <= ctx.stream_time() {
            return ctx.forward("late", &rec); // its window has closed
        }
        let windows = ctx.store::<String, i64>("windows");
        windows.update(&window_key(start, &key), |n| Some(n.unwrap_or(0) + 1))?;
        Ok(())
    }

    fn punctuate(&mut self, ctx: &mut Context, _kind: Punctuation, now: i64) -> Result<()> {
        let windows = ctx.store::<String, i64>("windows");
        let bound = window_key((now - self.size - self.grace + 1).max(0), "");
        for (k, count) in windows.range(None, Some(&bound))? {
            windows.delete(&k)?;
            let (start, key) = k.split_once('|').ok_or_else(|| Error::msg("bad window key"))?;
            let start: i64 = start.parse()?;
            let out = WindowCount { key: key.to_owned(), start, end: start + self.size, count };
            ctx.emit_json("counts", key, &out)?;
        }
        Ok(())
    }
}

export_processor!(Windowed::default());

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::testing::TestDriver;

    #[test]
    fn a_window_is_emitted_once_when_it_closes() {
        let mut d = TestDriver::new(Windowed::default()).with_store("windows").with_outputs(["counts", "late"]);
        d.init().unwrap();
        d.process(Record::new("a", "x").at(1_000)).unwrap();
        d.process(Record::new("a", "x").at(2_000)).unwrap();
        d.punctuate(Punctuation::StreamTime, 65_000).unwrap();
        assert!(d.emitted_to("counts").is_empty(), "open until 60 s + 10 s grace");
        d.punctuate(Punctuation::StreamTime, 70_000).unwrap();
        let closed: WindowCount = d.emitted_to("counts")[0].json().unwrap();
        assert_eq!(closed, WindowCount { key: "a".into(), start: 0, end: 60_000, count: 2 });
    }
}
