//! Prometheus metrics: latency histograms recorded by the runners, and the
//! text exposition of everything `/metrics` serves (counters come from the
//! applications' status, so there is one source of truth for them).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::status::AppStatus;

/// Upper bounds (seconds) of histogram buckets: 50µs to 10s.
const BUCKETS: [f64; 16] =
    [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// A lock-free latency histogram.
#[derive(Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    /// Sum in nanoseconds.
    sum_ns: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| s <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Appends the histogram in Prometheus text format.
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9);
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// Latencies of one application.
#[derive(Default)]
pub struct AppMetrics {
    /// One `Task::process` call (a batch of input, through every processor).
    pub process: Histogram,
    /// One commit (a write batch; on Kafka the whole transaction, from its
    /// start until the worker took its answer).
    pub commit: Histogram,
    /// On Kafka: how long commits held processing up (preparing one, and
    /// waiting for its answer when something could not go on without it).
    pub commit_blocked: Histogram,
    /// On Kafka: input records processed while a commit was in flight.
    pub processed_during_commit: std::sync::atomic::AtomicU64,
    /// On Kafka: from the commit's first send until the broker acknowledged
    /// every output and changelog record of it.
    pub commit_deliveries: Histogram,
    /// On Kafka: the offsets sent to the transaction and the transaction
    /// committed (exactly-once), or the offsets committed (at-least-once).
    pub commit_offsets: Histogram,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Renders every application's metrics.
pub fn render(apps: &[(AppStatus, std::sync::Arc<AppMetrics>)]) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    family("weir_up", "gauge", "1 while weir serves");
    let mut body = String::from("weir_up 1\n");
    for (s, _) in apps {
        let app = escape(&s.name);
        let running = s.tasks.iter().filter(|t| t.state == crate::status::TaskState::Running).count();
        let _ = writeln!(body, "weir_tasks{{app=\"{app}\"}} {}", s.tasks.len());
        let _ = writeln!(body, "weir_tasks_running{{app=\"{app}\"}} {running}");
        let mut processed = std::collections::BTreeMap::<&str, u64>::new();
        let mut emitted = std::collections::BTreeMap::<&str, u64>::new();
        let mut failures = std::collections::BTreeMap::<&str, u64>::new();
        let (mut records_in, mut dead, mut skipped, mut mismatches, mut commits) = (0, 0, 0, 0, 0);
        for t in &s.tasks {
            records_in += t.records_in;
            dead += t.dead_letters;
            skipped += t.skipped;
            mismatches += t.partition_mismatches;
            commits += t.commits;
            for (p, n) in &t.processed {
                *processed.entry(p).or_default() += n;
            }
            for (p, n) in &t.emitted {
                *emitted.entry(p).or_default() += n;
            }
            for (k, n) in &t.failures {
                *failures.entry(k).or_default() += n;
            }
            for i in &t.inputs {
                let _ = writeln!(
                    body,
                    "weir_lag{{app=\"{app}\",topic=\"{}\",partition=\"{}\"}} {}",
                    escape(&i.topic),
                    i.partition,
                    i.lag
                );
            }
            if let Some((done, total)) = t.restore {
                let _ = writeln!(body, "weir_restore_records{{app=\"{app}\",task=\"{}\"}} {done}", t.id);
                let _ = writeln!(body, "weir_restore_records_total{{app=\"{app}\",task=\"{}\"}} {total}", t.id);
            }
        }
        let _ = writeln!(body, "weir_records_in_total{{app=\"{app}\"}} {records_in}");
        for (p, n) in processed {
            let _ = writeln!(body, "weir_records_processed_total{{app=\"{app}\",processor=\"{}\"}} {n}", escape(p));
        }
        for (p, n) in emitted {
            let _ = writeln!(body, "weir_records_out_total{{app=\"{app}\",processor=\"{}\"}} {n}", escape(p));
        }
        for (k, n) in failures {
            let _ = writeln!(body, "weir_call_failures_total{{app=\"{app}\",kind=\"{}\"}} {n}", escape(k));
        }
        let _ = writeln!(body, "weir_dead_letters_total{{app=\"{app}\"}} {dead}");
        let _ = writeln!(body, "weir_skipped_total{{app=\"{app}\"}} {skipped}");
        let _ = writeln!(body, "weir_partition_mismatches_total{{app=\"{app}\"}} {mismatches}");
        let _ = writeln!(body, "weir_commits_total{{app=\"{app}\"}} {commits}");
        let mut by_state = std::collections::BTreeMap::<&str, u64>::new();
        for sw in &s.swaps {
            *by_state.entry(sw.state.as_str()).or_default() += 1;
        }
        for (state, n) in by_state {
            let _ = writeln!(body, "weir_swaps_total{{app=\"{app}\",state=\"{state}\"}} {n}");
        }
    }
    for (name, kind, help) in [
        ("weir_tasks", "gauge", "tasks of an application"),
        ("weir_tasks_running", "gauge", "tasks running"),
        ("weir_lag", "gauge", "records between the committed position and the end of an input partition"),
        ("weir_restore_records", "gauge", "records restored into a task's stores"),
        ("weir_records_in_total", "counter", "input records read by an application's tasks"),
        ("weir_records_processed_total", "counter", "records processed per processor"),
        ("weir_records_out_total", "counter", "records emitted per processor"),
        (
            "weir_call_failures_total",
            "counter",
            "failed guest calls by kind (trap, timeout, memory-limit, guest-error, ...)",
        ),
        ("weir_dead_letters_total", "counter", "records sent to the dead-letter topic"),
        ("weir_skipped_total", "counter", "records skipped by error policy"),
        (
            "weir_partition_mismatches_total",
            "counter",
            "input records on a partition murmur2 does not assign their key",
        ),
        ("weir_commits_total", "counter", "transactions committed"),
        ("weir_swaps_total", "counter", "updates by final state"),
    ] {
        family(name, kind, help);
    }
    out.push_str(&body);
    let _ = writeln!(
        out,
        "# HELP weir_process_seconds one task processing one batch of input\n# TYPE weir_process_seconds histogram"
    );
    for (s, m) in apps {
        m.process.render(&mut out, "weir_process_seconds", &format!("app=\"{}\"", escape(&s.name)));
    }
    let _ = writeln!(out, "# HELP weir_commit_seconds one commit\n# TYPE weir_commit_seconds histogram");
    for (s, m) in apps {
        m.commit.render(&mut out, "weir_commit_seconds", &format!("app=\"{}\"", escape(&s.name)));
    }
    let _ = writeln!(
        out,
        "# HELP weir_commit_blocked_seconds Kafka: processing held up by a commit (preparing it, waiting for its answer)\n\
         # TYPE weir_commit_blocked_seconds histogram"
    );
    for (s, m) in apps {
        m.commit_blocked.render(&mut out, "weir_commit_blocked_seconds", &format!("app=\"{}\"", escape(&s.name)));
    }
    let _ = writeln!(
        out,
        "# HELP weir_processed_during_commit_total Kafka: input records processed while a commit was in flight\n\
         # TYPE weir_processed_during_commit_total counter"
    );
    for (s, m) in apps {
        let n = m.processed_during_commit.load(std::sync::atomic::Ordering::Relaxed);
        let _ = writeln!(out, "weir_processed_during_commit_total{{app=\"{}\"}} {n}", escape(&s.name));
    }
    let _ = writeln!(
        out,
        "# HELP weir_commit_deliveries_seconds Kafka: a commit's records sent until all acknowledged\n\
         # TYPE weir_commit_deliveries_seconds histogram"
    );
    for (s, m) in apps {
        m.commit_deliveries.render(&mut out, "weir_commit_deliveries_seconds", &format!("app=\"{}\"", escape(&s.name)));
    }
    let _ = writeln!(
        out,
        "# HELP weir_commit_offsets_seconds Kafka: offsets sent and the transaction committed\n\
         # TYPE weir_commit_offsets_seconds histogram"
    );
    for (s, m) in apps {
        m.commit_offsets.render(&mut out, "weir_commit_offsets_seconds", &format!("app=\"{}\"", escape(&s.name)));
    }
    out
}
