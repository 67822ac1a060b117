//! `weir dev`: the edit–build–swap loop of a processor folder. It builds the
//! crate, starts a local embedded `weir serve` (data in `DIR/.weir-dev`, so
//! stores survive between sessions) or uses `--server`, deploys `app.yaml`,
//! feeds `input.jsonl` (or stdin, line by line), and prints every new output
//! record. On every change to the sources it rebuilds and hot-swaps the new
//! version in, keeping the stores; a compile error prints rustc's message and
//! keeps the old version running; a version that fails on probation is
//! rolled back by the server and the guest's message is shown.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;

use crate::client::call;
use crate::topology::load_spec;

/// How `weir dev` runs.
#[derive(Debug, Clone)]
pub struct DevOptions {
    pub dir: PathBuf,
    /// A running server to use instead of starting one.
    pub server: Option<String>,
    /// Feed records from stdin instead of `input.jsonl`.
    pub stdin: bool,
}

/// The `weir serve` this session started; stopped when dropped.
struct LocalServer(Child);

impl Drop for LocalServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server(dir: &Path) -> anyhow::Result<(LocalServer, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let data = dir.join(".weir-dev");
    let log = std::fs::File::create(dir.join(".weir-dev.log"))?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["serve", "--http", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(&data)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl in the child before exec; it only sets a signal.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
    }
    let child = LocalServer(cmd.spawn().context("starting weir serve")?);
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while call("GET", &format!("{url}/healthz"), None).is_err() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "weir serve did not start; see {}",
            dir.join(".weir-dev.log").display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("weir dev: weir serve at {url} (data in {}, log in .weir-dev.log)", data.display());
    Ok((child, url))
}

/// The newest modification time of the crate's sources and spec.
fn sources_changed_at(dir: &Path) -> Option<SystemTime> {
    fn walk(path: &Path, newest: &mut Option<SystemTime>) {
        let Ok(meta) = std::fs::metadata(path) else { return };
        if meta.is_dir() {
            for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
                walk(&entry.path(), newest);
            }
        } else if let Ok(t) = meta.modified() {
            *newest = (*newest).max(Some(t));
        }
    }
    let mut newest = None;
    for p in ["src", "Cargo.toml", "app.yaml"] {
        walk(&dir.join(p), &mut newest);
    }
    newest
}

/// Sends JSONL lines to their topics (lines without `"topic"` are skipped
/// with a message; wall-clock lines mean nothing to a server).
fn produce_lines(server: &str, lines: &[String]) {
    let mut per_topic: BTreeMap<String, String> = BTreeMap::new();
    for line in lines {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            eprintln!("weir dev: not a JSON line, skipped: {line}");
            continue;
        };
        match v["topic"].as_str() {
            Some(t) => per_topic.entry(t.to_owned()).or_default().push_str(&format!("{line}\n")),
            None if v.get("wall_clock").is_some() => {}
            None => eprintln!("weir dev: a line without \"topic\", skipped: {line}"),
        }
    }
    for (topic, jsonl) in per_topic {
        if let Err(e) = crate::client::produce(&topic, server, std::io::Cursor::new(jsonl.into_bytes())) {
            eprintln!("weir dev: producing to {topic}: {e:#}");
        }
    }
}

/// Prints records appended to `topics` since the last call.
struct Tail {
    server: String,
    next: BTreeMap<(String, u32), i64>,
    topics: Vec<String>,
}

impl Tail {
    /// Prints records appended since the last call (`print`: false only
    /// moves past them).
    fn read_new(&mut self, print: bool) {
        let Ok(list) = call("GET", &format!("{}/v1/topics", self.server), None) else { return };
        for topic in self.topics.clone() {
            let partitions = list["topics"]
                .as_array()
                .and_then(|ts| ts.iter().find(|t| t["name"] == topic.as_str()))
                .and_then(|t| t["partitions"].as_u64())
                .unwrap_or(0) as u32;
            for p in 0..partitions {
                let from = self.next.get(&(topic.clone(), p)).copied().unwrap_or(0);
                let url = format!("{}/v1/topics/{topic}/records?partition={p}&from={from}&limit=1000", self.server);
                let Ok(page) = call("GET", &url, None) else { continue };
                for mut r in page["records"].as_array().cloned().unwrap_or_default() {
                    let offset = r["offset"].as_i64().unwrap_or(from);
                    self.next.insert((topic.clone(), p), offset + 1);
                    if let Some(m) = r.as_object_mut() {
                        m.remove("offset");
                    }
                    if print {
                        println!("{r}");
                    }
                }
            }
        }
    }

    fn print_new(&mut self) {
        self.read_new(true);
    }
}

/// Deploys (or updates) the folder's app. Returns how many updates the app
/// had before, to watch the new one's outcome (see [`UpdateWatch`]).
fn deploy(spec: &Path, server: &str, app: &str) -> Option<usize> {
    let before = call("GET", &format!("{server}/v1/apps/{app}"), None)
        .ok()
        .and_then(|s| s["swaps"].as_array().map(Vec::len))
        .unwrap_or(0);
    match crate::client::upload_and_deploy(spec, server) {
        Ok(_) => Some(before),
        Err(e) => {
            eprintln!("weir dev: deploy refused: {e:#}");
            None
        }
    }
}

/// A hot swap whose outcome is not known yet: a version that fails on its
/// first records is rolled back after the deploy answered.
struct UpdateWatch {
    /// Updates the app had before this one.
    before: usize,
}

impl UpdateWatch {
    /// True once the update is final (and said so when it rolled back).
    fn settled(&self, server: &str, app: &str) -> bool {
        let Ok(status) = call("GET", &format!("{server}/v1/apps/{app}"), None) else { return false };
        let swaps = status["swaps"].as_array().cloned().unwrap_or_default();
        let Some(swap) = swaps.get(self.before) else { return true }; // Nothing changed: no update.
        match swap["state"].as_str() {
            Some("rolled-back") => {
                eprintln!("weir dev: the new version was rolled back: {}", swap["error"].as_str().unwrap_or("?"));
                true
            }
            Some("switching" | "switched") => false,
            _ => true,
        }
    }
}

/// Waits (a while) until the app runs and has processed all its input.
fn wait_idle(server: &str, app: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(s) = call("GET", &format!("{server}/v1/apps/{app}"), None)
            && s["state"] == "running"
            && s["lag"] == 0
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs the loop until interrupted (or stdin ends, with `--stdin`).
pub fn run(options: DevOptions) -> anyhow::Result<()> {
    let dir = options.dir.canonicalize().with_context(|| format!("{}", options.dir.display()))?;
    let spec_path = dir.join("app.yaml");
    let spec = load_spec(&spec_path).map_err(|e| anyhow::anyhow!("{}:\n{e}", spec_path.display()))?;
    let app = spec.name.clone();
    let built = crate::author::build(&dir)?;
    eprintln!("{}", crate::author::describe(&built));
    let (_local, server) = match &options.server {
        Some(url) => (None, url.trim_end_matches('/').to_owned()),
        None => {
            let (child, url) = start_server(&dir)?;
            (Some(child), url)
        }
    };
    let mut watch = deploy(&spec_path, &server, &app).map(|before| UpdateWatch { before });
    let mut outputs: Vec<String> = spec.sinks.values().map(|s| s.topic.clone()).collect();
    outputs.push(format!("{app}-dlq"));
    let mut tail = Tail { server: server.clone(), next: BTreeMap::new(), topics: outputs };
    // What is already there came from an earlier session.
    tail.read_new(false);

    let (lines_tx, lines_rx) = mpsc::channel::<Option<String>>();
    if options.stdin {
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines().map_while(Result::ok) {
                if lines_tx.send(Some(line)).is_err() {
                    return;
                }
            }
            let _ = lines_tx.send(None);
        });
    } else {
        let input = std::fs::read_to_string(dir.join("input.jsonl")).unwrap_or_default();
        produce_lines(&server, &input.lines().filter(|l| !l.trim().is_empty()).map(str::to_owned).collect::<Vec<_>>());
    }
    eprintln!("weir dev: watching {} (Ctrl-C stops)", dir.display());
    let mut seen = sources_changed_at(&dir);
    loop {
        let mut batch = Vec::new();
        loop {
            match lines_rx.try_recv() {
                Ok(Some(line)) => batch.push(line),
                Ok(None) => {
                    // stdin ended: print what the last records gave, then stop.
                    produce_lines(&server, &batch);
                    wait_idle(&server, &app);
                    tail.print_new();
                    if let Some(w) = &watch {
                        w.settled(&server, &app);
                    }
                    return Ok(());
                }
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            produce_lines(&server, &batch);
        }
        let now = sources_changed_at(&dir);
        if now != seen {
            seen = now;
            eprintln!("weir dev: sources changed, rebuilding");
            match crate::author::build(&dir) {
                Ok(built) => {
                    eprintln!("{}", crate::author::describe(&built));
                    watch = deploy(&spec_path, &server, &app).map(|before| UpdateWatch { before });
                }
                Err(e) => eprintln!("weir dev: {e:#}; the previous version keeps running"),
            }
        }
        tail.print_new();
        if watch.as_ref().is_some_and(|w| w.settled(&server, &app)) {
            watch = None;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}
