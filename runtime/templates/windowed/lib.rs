//! {{name}}: a windowed weir processor. It counts records per key in
//! tumbling windows of event time (`size`, default 1m, with `grace`, default
//! 10s, both config durations) through the SDK's windows: each window's
//! count is emitted once, when stream time reaches its end plus the grace,
//! as `{"key", "start", "end", "value": count}`; a record whose window has
//! closed goes to the output `late`. The counts live in the window store
//! `windows`; one durable timer per window closes it (see the SDK README's
//! "Time" chapter).

use std::time::Duration;

use weir_sdk::prelude::*;

#[derive(Deserialize)]
struct Settings {
    #[serde(default = "one_minute", with = "weir_sdk::duration")]
    size: Duration,
    #[serde(default = "ten_seconds", with = "weir_sdk::duration")]
    grace: Duration,
}

fn one_minute() -> Duration {
    Duration::from_secs(60)
}

fn ten_seconds() -> Duration {
    Duration::from_secs(10)
}

pub struct Windowed {
    counts: WindowedAggregate,
}

fn counts(size: Duration, grace: Duration) -> WindowedAggregate {
    WindowedAggregate::new("windows", TimeWindows::tumbling(size).grace(grace)).to("counts").late_to("late")
}

impl Default for Windowed {
    fn default() -> Self {
        Windowed { counts: counts(one_minute(), ten_seconds()) }
    }
}

impl Processor for Windowed {
    fn init(&mut self, _ctx: &mut Context, config: &Config) -> Result<()> {
        let settings: Settings = config.deserialize()?;
        self.counts = counts(settings.size, settings.grace);
        Ok(())
    }

    fn process(&mut self, ctx: &mut Context, rec: Record) -> Result<()> {
        self.counts.add(ctx, &rec, |count: Option<i64>, _| Ok(count.unwrap_or(0) + 1))?;
        Ok(())
    }

    fn on_timer(&mut self, ctx: &mut Context, timer: Timer) -> Result<()> {
        self.counts.on_timer::<i64>(ctx, &timer)?;
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
        d.process(Record::new("a", "x").at(1_000)).unwrap();
        d.process(Record::new("a", "x").at(2_000)).unwrap();
        d.process(Record::new("b", "x").at(69_999)).unwrap();
        assert!(d.emitted_to("counts").is_empty(), "open until 60 s + 10 s grace");
        d.process(Record::new("b", "x").at(70_000)).unwrap();
        let closed: WindowResult<i64> = d.emitted_to("counts")[0].json().unwrap();
        assert_eq!(closed, WindowResult { key: "a".into(), start: 0, end: 60_000, value: 2 });
        d.process(Record::new("a", "x").at(3_000)).unwrap();
        assert_eq!(d.emitted_to("late").len(), 1, "its window has closed");
    }
}
