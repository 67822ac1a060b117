//! A real Apache Kafka for the Kafka tests: a single-node KRaft broker
//! (controller and broker in one JVM) on free 127.0.0.1 ports, run from the
//! Maven Central jars that `tests/kafka-broker/pom.xml` copies into
//! `tests/kafka-broker/target/libs` (or `WEIR_KAFKA_LIBS`).
//!
//! Most tests share one broker per test binary ([`shared`]) and keep out of
//! each other's way with their own application and topic names
//! ([`unique`]). A test that kills, freezes or restarts the broker, or that
//! runs an example with its fixed topic names, starts its own
//! ([`KafkaBroker::start`]). Every broker is killed when its owner drops it,
//! and the shared one when the test process exits (its JVM is started with
//! `PR_SET_PDEATHSIG` from a thread that lives as long as the process).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use weir::backend::kafka::ReadOptions;

/// A Kafka cluster, by its bootstrap servers, with the reads and writes tests need.
pub struct Kafka {
    pub bootstrap: String,
}

impl Kafka {
    pub fn produce(&self, topic: &str, jsonl: &str) -> usize {
        weir::backend::kafka::produce_jsonl(&self.bootstrap, topic, jsonl.as_bytes())
            .unwrap_or_else(|e| panic!("produce to {topic}: {e:#}"))
    }

    /// Every committed record of a topic (read_committed), partition by partition.
    pub fn consume(&self, topic: &str) -> Vec<Value> {
        self.read(topic, &ReadOptions::default())
    }

    /// Every record of a topic, those of open and aborted transactions too.
    pub fn consume_uncommitted(&self, topic: &str) -> Vec<Value> {
        self.read(topic, &ReadOptions { uncommitted: true, ..ReadOptions::default() })
    }

    fn read(&self, topic: &str, options: &ReadOptions) -> Vec<Value> {
        let mut out = Vec::new();
        weir::backend::kafka::consume(&self.bootstrap, topic, options, &mut out)
            .unwrap_or_else(|e| panic!("consume {topic}: {e:#}"));
        String::from_utf8(out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    /// Each partition's log end offset (high watermark) now.
    pub fn ends(&self, topic: &str) -> Vec<(u64, i64)> {
        self.watermarks(topic, false)
    }

    /// Waits until no transaction is open on any partition of `topic`: its
    /// last stable offset (where read_committed reads stop) has reached the
    /// log end. An instance killed with a transaction open leaves the
    /// partitions it wrote to unreadable past that point until the broker
    /// aborts the transaction (the transaction timeout), so a read right
    /// after a kill would see only a prefix of what is committed.
    pub fn wait_decided(&self, topic: &str) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let stable = self.watermarks(topic, true);
            if stable == self.ends(topic) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{topic}: a transaction stayed open for 90 s (last stable offsets {stable:?}, ends {:?})",
                self.ends(topic)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Per partition, the high watermark, or with `stable` the last stable
    /// offset (librdkafka lists offsets at the consumer's isolation level).
    fn watermarks(&self, topic: &str, stable: bool) -> Vec<(u64, i64)> {
        use rdkafka::consumer::Consumer;
        let counts = weir::backend::kafka::partition_counts(&self.bootstrap).unwrap();
        let client: weir::backend::kafka::PlainConsumer = weir::backend::kafka::reader_config(&self.bootstrap, stable)
            .create_with_context(weir::backend::kafka::QuietContext)
            .unwrap();
        (0..counts.get(topic).copied().unwrap_or(0))
            .map(|p| {
                let (_, high) = client.fetch_watermarks(topic, p as i32, Duration::from_secs(10)).unwrap();
                (u64::from(p), high)
            })
            .collect()
    }

    /// A topic's configuration as the broker describes it.
    pub fn topic_config(&self, topic: &str) -> std::collections::BTreeMap<String, String> {
        use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
        let admin: AdminClient<rdkafka::client::DefaultClientContext> =
            weir::backend::kafka::client_config(&self.bootstrap).create().unwrap();
        let described = futures::executor::block_on(
            admin.describe_configs([&ResourceSpecifier::Topic(topic)], &AdminOptions::new()),
        )
        .unwrap();
        let resource = described.into_iter().next().unwrap().unwrap();
        resource.entries.into_iter().filter_map(|e| e.value.map(|v| (e.name, v))).collect()
    }

    pub fn topic_exists(&self, topic: &str) -> bool {
        weir::backend::kafka::partition_counts(&self.bootstrap).unwrap().contains_key(topic)
    }
}

/// One Kafka broker process of this test's own.
pub struct KafkaBroker {
    child: Option<Child>,
    kafka: Kafka,
    properties: PathBuf,
    dir: tempfile::TempDir,
}

impl std::ops::Deref for KafkaBroker {
    type Target = Kafka;

    fn deref(&self) -> &Kafka {
        &self.kafka
    }
}

/// The broker every test without special needs uses; started on first use.
pub fn shared() -> &'static Kafka {
    static SHARED: OnceLock<KafkaBroker> = OnceLock::new();
    &SHARED.get_or_init(KafkaBroker::start).kafka
}

/// A name no other test of this run uses: `base-<pid>-<n>`.
pub fn unique(base: &str) -> String {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{base}-{}-{n}", std::process::id())
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl KafkaBroker {
    /// Formats a fresh log dir and starts a broker on it; returns once it
    /// answers a metadata request.
    pub fn start() -> KafkaBroker {
        let libs = broker_libs();
        let dir = tempfile::Builder::new().prefix("weir-kafka-").tempdir().unwrap();
        let (port, controller) = (free_port(), free_port());
        let template = std::fs::read_to_string(broker_dir().join("server.properties.in")).unwrap();
        let properties = dir.path().join("server.properties");
        let log_dir = dir.path().join("logs");
        std::fs::write(
            &properties,
            template
                .replace("{PORT}", &port.to_string())
                .replace("{CONTROLLER_PORT}", &controller.to_string())
                .replace("{LOG_DIR}", &log_dir.display().to_string()),
        )
        .unwrap();
        let cluster_id = java_output(&libs, &["kafka.tools.StorageTool", "random-uuid"]);
        java_output(
            &libs,
            &["kafka.tools.StorageTool", "format", "-t", cluster_id.trim(), "-c", &properties.display().to_string()],
        );
        let mut broker =
            KafkaBroker { child: None, kafka: Kafka { bootstrap: format!("127.0.0.1:{port}") }, properties, dir };
        broker.launch();
        broker
    }

    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).unwrap();
        let mut cmd = Command::new("java");
        cmd.args(["-Xms128m", "-Xmx768m", "-XX:+UseG1GC"])
            .arg(format!("-Dlog4j2.configurationFile={}", broker_dir().join("log4j2.properties").display()))
            .arg("-cp")
            .arg(format!("{}/*", broker_libs().display()))
            .arg("kafka.Kafka")
            .arg(&self.properties)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.child = Some(spawn_tied_to_this_process(cmd));
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            match weir::backend::kafka::partition_counts(&self.bootstrap) {
                Ok(_) => break,
                Err(e) => {
                    if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                        panic!("the Kafka broker exited ({status}); its log:\n{}", self.log_tail());
                    }
                    assert!(
                        Instant::now() < deadline,
                        "the Kafka broker at {} answered no metadata request in 90 s ({e}); its log:\n{}",
                        self.bootstrap,
                        self.log_tail()
                    );
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("broker.log")
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// kill -9: no controlled shutdown; the log dir stays as it was.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the broker again on its log dir (after [`kill`](Self::kill)).
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// Freezes the broker (SIGSTOP): unreachable, its state kept.
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
    }

    pub fn thaw(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: i32) {
        if let Some(child) = &self.child {
            // SAFETY: a plain kill(2) on our own child.
            unsafe { libc::kill(child.id() as i32, sig) };
        }
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        self.thaw();
        self.kill();
    }
}

/// `tests/kafka-broker`: the pom and the broker's configuration template.
fn broker_dir() -> PathBuf {
    weir_tests::workspace_dir().join("tests").join("kafka-broker")
}

/// The broker's classpath folder: `WEIR_KAFKA_LIBS`, else the pom's
/// `target/libs`, fetched with Maven the first time it is missing.
fn broker_libs() -> PathBuf {
    static LIBS: OnceLock<PathBuf> = OnceLock::new();
    LIBS.get_or_init(|| {
        if let Some(libs) = std::env::var_os("WEIR_KAFKA_LIBS") {
            return libs.into();
        }
        let libs = broker_dir().join("target").join("libs");
        if !has_broker_jars(&libs) {
            require_tool("java", "-version");
            require_tool("mvn", "-v");
            let out = Command::new("mvn")
                .args(["-q", "-B", "-f"])
                .arg(broker_dir().join("pom.xml"))
                .arg("package")
                .output()
                .expect("mvn runs");
            assert!(
                out.status.success() && has_broker_jars(&libs),
                "fetching the Kafka broker's jars from Maven Central failed (mvn -f tests/kafka-broker/pom.xml \
                 package):\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        libs
    })
    .clone()
}

fn has_broker_jars(libs: &Path) -> bool {
    std::fs::read_dir(libs)
        .is_ok_and(|entries| entries.flatten().any(|e| e.file_name().to_string_lossy().starts_with("kafka_2.13-")))
}

fn require_tool(tool: &str, version_flag: &str) {
    let found = Command::new(tool).arg(version_flag).output().is_ok_and(|o| o.status.success());
    assert!(
        found,
        "the Kafka tests run a real Apache Kafka from Maven Central's jars and need `{tool}` (Java 17+ and Maven \
         3.8+: `apt-get install openjdk-17-jre-headless maven`, which `./dev test` does), or WEIR_KAFKA_LIBS \
         pointing at a folder with the broker's jars"
    );
}

/// Runs a Java main class on the broker's classpath; panics with its output on failure.
fn java_output(libs: &Path, args: &[&str]) -> String {
    let out = Command::new("java")
        .arg("-cp")
        .arg(format!("{}/*", libs.display()))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run java (the Kafka tests need Java 17+): {e}"));
    assert!(
        out.status.success(),
        "java {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Spawns `cmd` from a thread that lives as long as the test process, with
/// `PR_SET_PDEATHSIG`: the child gets SIGKILL when that thread ends, so no
/// broker outlives a test binary that exits (or dies) without dropping it.
fn spawn_tied_to_this_process(mut cmd: Command) -> Child {
    type Request = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::spawn(move || {
            for (mut cmd, reply) in rx {
                let _ = reply.send(cmd.spawn());
            }
            // The channel's sender lives in a static: this thread never ends
            // before the process does.
        });
        Mutex::new(tx)
    });
    // SAFETY: only an async-signal-safe prctl(2) between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    spawner.lock().unwrap().send((cmd, tx)).expect("the spawner thread runs");
    rx.recv().expect("the spawner answers").unwrap_or_else(|e| panic!("cannot start the Kafka broker (java): {e}"))
}
