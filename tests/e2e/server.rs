//! A `weir serve` child process for tests: started on a free port with a
//! data dir of the test's own, killed (SIGKILL) and restarted at will,
//! always stopped when dropped.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How a server is started.
#[derive(Clone, Default)]
pub struct Options {
    pub commit_interval: Option<String>,
    /// RLIMIT_FSIZE for the process (bytes): writes past it fail like a full disk.
    pub file_size_limit: Option<u64>,
    /// Run as this uid (tests run as root; permissions only bite other users).
    pub uid: Option<u32>,
    pub env: Vec<(String, String)>,
}

pub struct Server {
    child: Option<Child>,
    pub url: String,
    pub data_dir: PathBuf,
    log: PathBuf,
    options: Options,
}

impl Server {
    /// Starts a server on `data_dir` and waits until it listens.
    pub fn start(data_dir: &Path, options: Options) -> Server {
        let log = data_dir.with_extension("log");
        let mut server = Server { child: None, url: String::new(), data_dir: data_dir.to_path_buf(), log, options };
        server.spawn().unwrap_or_else(|e| panic!("{e}"));
        server
    }

    /// Starts a server expected to fail: returns its exit code and stderr.
    pub fn start_failing(data_dir: &Path, options: Options) -> (i32, String) {
        let mut s = Server {
            child: None,
            url: String::new(),
            data_dir: data_dir.to_path_buf(),
            log: data_dir.with_extension("log"),
            options,
        };
        match s.spawn() {
            Ok(()) => panic!("weir serve started on {} but should have refused", data_dir.display()),
            Err(e) => {
                let code = s.child.take().and_then(|mut c| c.wait().ok()).and_then(|st| st.code()).unwrap_or(-1);
                (code, e)
            }
        }
    }

    /// The weir binary to run. Another uid may not reach the build's target
    /// dir (CI keeps it under root's home), so for one the binary is copied
    /// beside the data dir, whose parent the test makes world-readable.
    fn binary(&self) -> PathBuf {
        let built = PathBuf::from(env!("CARGO_BIN_EXE_weir"));
        if self.options.uid.is_none() {
            return built;
        }
        let parent = self.data_dir.parent().expect("data dir has a parent");
        let copy = parent.join("weir-for-other-uid");
        std::fs::copy(&built, &copy).expect("copy the weir binary");
        std::fs::set_permissions(&copy, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        copy
    }

    fn spawn(&mut self) -> Result<(), String> {
        let mut cmd = Command::new(self.binary());
        cmd.arg("serve").arg("--data-dir").arg(&self.data_dir).args(["--http", "127.0.0.1:0"]);
        if let Some(ci) = &self.options.commit_interval {
            cmd.args(["--commit-interval", ci]);
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("server log");
        cmd.stdout(Stdio::piped())
            .stderr(log)
            .env("WEIR_LOG", "info,wasmtime=warn,cranelift=warn")
            .env("NO_COLOR", "1");
        cmd.env("WEIR_WORKERS", "2");
        for (k, v) in &self.options.env {
            cmd.env(k, v);
        }
        if let Some(uid) = self.options.uid {
            cmd.uid(uid);
        }
        if let Some(limit) = self.options.file_size_limit {
            // SAFETY: only async-signal-safe libc calls between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                    let r = libc::rlimit { rlim_cur: limit, rlim_max: limit };
                    if libc::setrlimit(libc::RLIMIT_FSIZE, &r) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().map_err(|e| format!("cannot start weir serve: {e}"))?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
        self.child = Some(child);
        match line.trim().strip_prefix("listening ") {
            Some(url) => {
                self.url = url.to_owned();
                Ok(())
            }
            None => Err(format!("weir serve did not start; its log:\n{}", self.log_tail())),
        }
    }

    /// The process id of the running server.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the server runs").id()
    }

    /// SIGKILL: no shutdown, no final commit.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn().unwrap_or_else(|e| panic!("{e}"));
    }

    /// Asks the server to stop (SIGTERM) and waits.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: sending a signal to our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    /// The whole server log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn get(&self, path: &str) -> anyhow::Result<Value> {
        weir::client::call("GET", &format!("{}{path}", self.url), None)
    }

    /// Deploys a spec file (uploading its components).
    pub fn deploy(&self, spec: &Path) {
        weir::client::deploy(spec, &self.url).unwrap_or_else(|e| panic!("deploy failed: {e:#}\n{}", self.log_tail()));
    }

    pub fn produce(&self, topic: &str, jsonl: &str) -> anyhow::Result<u64> {
        weir::client::produce(topic, &self.url, std::io::Cursor::new(jsonl.as_bytes()))
    }

    /// Every record of a topic, as parsed output lines with offsets.
    pub fn consume_all(&self, topic: &str) -> Vec<Value> {
        let mut out = Vec::new();
        weir::client::consume(topic, &self.url, 0, None, None, true, &mut out).expect("consume");
        String::from_utf8(out).expect("utf8").lines().map(|l| serde_json::from_str(l).expect("json line")).collect()
    }

    /// Waits until every task of `app` runs and nothing is left to process.
    pub fn wait_idle(&self, app: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            if let Ok(s) = self.get(&format!("/v1/apps/{app}")) {
                let failed = s["tasks"].as_array().into_iter().flatten().any(|t| t["state"] == "failed");
                assert!(!failed, "a task failed: {s:#}");
                if s["state"] == "running" && s["lag"] == 0 {
                    return s;
                }
                last = s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{app} did not catch up within {timeout:?}: {last:#}\n{}", self.log_tail());
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A small deterministic generator (xorshift), seeded per test run.
pub struct Rng(u64);

impl Rng {
    /// Seeded from `WEIR_TEST_SEED` or the clock; the seed is printed.
    pub fn new(test: &str) -> Rng {
        let seed = std::env::var("WEIR_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64) | 1
        });
        eprintln!("{test}: WEIR_TEST_SEED={seed}");
        Rng(seed)
    }
    /// A generator of its own, from a seed another one gave.
    pub fn seeded(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Writes a spec into `dir`, with `{guests}` replaced by the built guests' directory.
pub fn write_spec(dir: &Path, name: &str, yaml: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, yaml.replace("{guests}", &weir_tests::guests_dir().display().to_string()))
        .expect("write spec");
    path
}
