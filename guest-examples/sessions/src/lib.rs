//! User sessions: a user's activity with gaps shorter than 30 minutes is one
//! session; each session is emitted once, when it closes (30 minutes after
//! its last event, plus 5 minutes of grace), to `sessions` as `{"key":
//! user, "start", "end", "value": {"events", "pages"}}`. Events more than 5
//! minutes behind stream time are late and go to `late`. Kafka Streams'
//! `windowedBy(SessionWindows.ofInactivityGapAndGrace(30m, 5m))`
//! `.aggregate(...).suppress(untilWindowCloses(unbounded()))`.
//!
//! Input values: `{"page": "/path"}`.

use std::time::Duration;

use weir_sdk::prelude::*;

#[derive(Serialize, Deserialize, Debug, Default, Clone, PartialEq)]
pub struct Activity {
    pub events: u64,
    /// Distinct pages, in order of first visit.
    pub pages: Vec<String>,
}

#[derive(Deserialize)]
struct Event {
    page: String,
}

pub struct Sessions {
    sessions: SessionAggregate,
}

impl Default for Sessions {
    fn default() -> Self {
        let windows = SessionWindows::with_gap(Duration::from_secs(30 * 60)).grace(Duration::from_secs(5 * 60));
        Sessions { sessions: SessionAggregate::new("sessions", windows).to("sessions").late_to("late") }
    }
}

fn merge(mut a: Activity, b: Activity) -> Result<Activity> {
    a.events += b.events;
    for page in b.pages {
        if !a.pages.contains(&page) {
            a.pages.push(page);
        }
    }
    Ok(a)
}

impl Processor for Sessions {
    fn process(&mut self, ctx: &mut Context, rec: Record) -> Result<()> {
        let event: Event = rec.json()?;
        self.sessions.add(ctx, &rec, merge, |activity: Option<Activity>, _| {
            let mut a = activity.unwrap_or_default();
            a.events += 1;
            if !a.pages.contains(&event.page) {
                a.pages.push(event.page.clone());
            }
            Ok(a)
        })?;
        Ok(())
    }

    fn on_timer(&mut self, ctx: &mut Context, timer: Timer) -> Result<()> {
        self.sessions.on_timer::<Activity>(ctx, &timer)?;
        Ok(())
    }
}

export_processor!(Sessions::default());

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::testing::TestDriver;

    const MIN: i64 = 60_000;

    fn view(user: &str, page: &str, minute: i64) -> Record {
        Record::from_json(user, &serde_json::json!({ "page": page })).at(minute * MIN)
    }

    #[test]
    fn a_late_event_between_two_sessions_merges_them() {
        let mut d = TestDriver::new(Sessions::default()).with_store("sessions").with_outputs(["sessions", "late"]);
        d.process(view("u", "/a", 0)).unwrap();
        d.process(view("u", "/b", 33)).unwrap(); // 33 min later: a second session
        d.process(view("u", "/c", 28)).unwrap(); // within 30 min of both, 5 min late: one session
        assert!(d.emitted_to("sessions").is_empty(), "the first closes at 0 + 30 + 5 min");
        d.process(view("v", "/x", 200)).unwrap(); // closes u's session (33 + 30 + 5 <= 200)
        let out: Vec<WindowResult<Activity>> = d.emitted_to("sessions").iter().map(|e| e.json().unwrap()).collect();
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!((out[0].start, out[0].end), (0, 33 * MIN));
        assert_eq!(out[0].value, Activity { events: 3, pages: vec!["/a".into(), "/b".into(), "/c".into()] });
    }
}
