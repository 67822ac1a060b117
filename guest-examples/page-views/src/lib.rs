//! Page views per page in hopping windows: 10-minute windows every 5
//! minutes, 1 minute of grace; each window's count is emitted once, when it
//! closes, to `counts` as `{"key": page, "start", "end", "value": count}`;
//! a view that arrives after every window it falls in has closed goes to
//! `late`. Kafka Streams' `windowedBy(TimeWindows.ofSizeAndGrace(10m,
//! 1m).advanceBy(5m)).count().suppress(untilWindowCloses(unbounded()))`.
//!
//! Config (all optional): `size`, `advance`, `grace` as durations.

use std::time::Duration;

use weir_sdk::prelude::*;

#[derive(Deserialize)]
struct Settings {
    #[serde(default = "ten_minutes", with = "weir_sdk::duration")]
    size: Duration,
    #[serde(default = "five_minutes", with = "weir_sdk::duration")]
    advance: Duration,
    #[serde(default = "one_minute", with = "weir_sdk::duration")]
    grace: Duration,
}

fn ten_minutes() -> Duration {
    Duration::from_secs(600)
}
fn five_minutes() -> Duration {
    Duration::from_secs(300)
}
fn one_minute() -> Duration {
    Duration::from_secs(60)
}

pub struct PageViews {
    views: WindowedAggregate,
}

impl Default for PageViews {
    fn default() -> Self {
        PageViews { views: aggregate(ten_minutes(), five_minutes(), one_minute()) }
    }
}

fn aggregate(size: Duration, advance: Duration, grace: Duration) -> WindowedAggregate {
    WindowedAggregate::new("views", TimeWindows::hopping(size, advance).grace(grace)).to("counts").late_to("late")
}

impl Processor for PageViews {
    fn init(&mut self, _ctx: &mut Context, config: &Config) -> Result<()> {
        let s: Settings = config.deserialize()?;
        self.views = aggregate(s.size, s.advance, s.grace);
        Ok(())
    }

    fn process(&mut self, ctx: &mut Context, rec: Record) -> Result<()> {
        self.views.add(ctx, &rec, |count: Option<u64>, _| Ok(count.unwrap_or(0) + 1))?;
        Ok(())
    }

    fn on_timer(&mut self, ctx: &mut Context, timer: Timer) -> Result<()> {
        self.views.on_timer::<u64>(ctx, &timer)?;
        Ok(())
    }
}

export_processor!(PageViews::default());

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::testing::TestDriver;

    const MIN: i64 = 60_000;

    fn results(d: &TestDriver<PageViews>) -> Vec<(i64, u64)> {
        d.emitted_to("counts")
            .iter()
            .map(|e| e.json::<WindowResult<u64>>().unwrap())
            .map(|r| (r.start, r.value))
            .collect()
    }

    #[test]
    fn each_window_is_emitted_once_when_it_closes_and_late_views_go_to_late() {
        let mut d = TestDriver::new(PageViews::default()).with_store("views").with_outputs(["counts", "late"]);
        d.process(Record::new("/home", "{}").at(MIN)).unwrap(); // windows [-5m,5m) and [0,10m)
        assert!(results(&d).is_empty());
        d.process(Record::new("/home", "{}").at(7 * MIN)).unwrap(); // [0,10m) and [5m,15m)
        // [-5m,5m) closes at 6m: stream time 7m closed it right after that record.
        assert_eq!(results(&d), vec![(-5 * MIN, 1)]);
        d.process(Record::new("/docs", "{}").at(11 * MIN)).unwrap();
        assert_eq!(results(&d), vec![(-5 * MIN, 1), (0, 2)], "[0,10m) closed at 11m");
        d.process(Record::new("/home", "{}").at(2 * MIN)).unwrap(); // both its windows closed
        assert_eq!(d.emitted_to("late").len(), 1);
    }
}
