//! Per-key activity, closed by a durable timer: every record of a key moves
//! the key's timer to `gap_ms` (default 20 s) after the latest timestamp
//! seen for it (cancelling the previous one); when stream time reaches the
//! timer, the key's activity is emitted to `closed` as
//! `{"key", "count", "first", "last"}` and forgotten. The guest of the
//! timer tests: set, cancel and fire, interleaved with records, must give
//! the same output however the input is batched and crashed.

use weir_sdk::prelude::*;

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct Activity {
    pub count: i64,
    pub first: i64,
    pub last: i64,
    /// When the key's timer fires.
    pub timer: i64,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct Closed {
    pub key: String,
    pub count: i64,
    pub first: i64,
    pub last: i64,
}

pub struct Inactivity {
    gap: i64,
    domain: TimeDomain,
    fail_key: Option<String>,
}

impl Default for Inactivity {
    fn default() -> Self {
        Inactivity { gap: 20_000, domain: TimeDomain::StreamTime, fail_key: None }
    }
}

impl Processor for Inactivity {
    fn init(&mut self, _ctx: &mut Context, config: &Config) -> Result<()> {
        self.gap = config.parse("gap_ms")?.unwrap_or(20_000);
        self.domain = match config.get("domain") {
            None | Some("stream-time") => TimeDomain::StreamTime,
            Some("wall-clock") => TimeDomain::WallClock,
            Some(other) => bail!("domain `{other}`: stream-time or wall-clock"),
        };
        self.fail_key = config.get("fail_key").map(str::to_owned);
        Ok(())
    }

    fn process(&mut self, ctx: &mut Context, rec: Record) -> Result<()> {
        let key = rec.key_str()?.to_owned();
        let store = ctx.store::<String, Activity>("activity");
        let now = match self.domain {
            TimeDomain::StreamTime => rec.timestamp(),
            TimeDomain::WallClock => ctx.wall_clock_time(),
        };
        let activity = match store.get(&key)? {
            // Stream-time timers fire right after the record that makes
            // stream time reach them: this record may be the first past the
            // key's timer, which has then not fired yet. The activity it
            // belongs to is over all the same.
            Some(a) if a.timer <= now => {
                ctx.cancel_timer(self.domain, key.as_str(), a.timer)?;
                let closed = Closed { key: key.clone(), count: a.count, first: a.first, last: a.last };
                ctx.emit_record(Emitted::new_json("closed", key.as_str(), &closed)?.at(a.timer))?;
                Activity { count: 1, first: now, last: now, timer: now + self.gap }
            }
            Some(mut a) => {
                ctx.cancel_timer(self.domain, key.as_str(), a.timer)?;
                a.count += 1;
                a.first = a.first.min(now);
                a.last = a.last.max(now);
                a.timer = a.last + self.gap;
                a
            }
            None => Activity { count: 1, first: now, last: now, timer: now + self.gap },
        };
        ctx.set_timer(self.domain, key.as_str(), activity.timer)?;
        ctx.store::<String, Activity>("activity").put(&key, &activity)
    }

    fn on_timer(&mut self, ctx: &mut Context, timer: Timer) -> Result<()> {
        let key = timer.key_str()?.to_owned();
        if self.fail_key.as_deref() == Some(key.as_str()) {
            bail!("on_timer fails for `{key}` (fail_key)");
        }
        let store = ctx.store::<String, Activity>("activity");
        let Some(a) = store.get(&key)? else { bail!("timer for `{key}` without activity") };
        if a.timer != timer.timestamp {
            bail!("timer at {} for `{key}` was cancelled (the activity's is at {})", timer.timestamp, a.timer);
        }
        store.delete(&key)?;
        let closed = Closed { key: key.clone(), count: a.count, first: a.first, last: a.last };
        ctx.emit_json("closed", key.as_str(), &closed)
    }
}

export_processor!(Inactivity::default());

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::testing::TestDriver;

    fn driver() -> TestDriver<Inactivity> {
        TestDriver::new(Inactivity::default()).with_store("activity").with_outputs(["closed"])
    }

    #[test]
    fn a_key_closes_when_stream_time_passes_its_last_record_plus_the_gap() {
        let mut d = driver();
        d.process(Record::new("a", "{}").at(1_000)).unwrap();
        d.process(Record::new("a", "{}").at(15_000)).unwrap();
        assert_eq!(d.timers().len(), 1, "the first timer was cancelled when the second record moved it");
        d.process(Record::new("b", "{}").at(34_999)).unwrap();
        assert!(d.emitted().is_empty(), "a's timer is at 35000");
        d.process(Record::new("b", "{}").at(35_000)).unwrap();
        let closed: Vec<Closed> = d.emitted_to("closed").iter().map(|e| e.json().unwrap()).collect();
        assert_eq!(closed, vec![Closed { key: "a".into(), count: 2, first: 1_000, last: 15_000 }]);
        assert_eq!(d.emitted_to("closed")[0].timestamp, 35_000, "emitted at the timer's time");
        assert_eq!(d.timers().len(), 1, "b's timer is left");
    }
}
