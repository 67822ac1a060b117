//! The `weir` command line: argument parsing and the commands' top level.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::testdriver::{self, TestOptions};
use crate::wasm::{EngineConfig, WasmEngine};

/// weir: Kafka stream processing with sandboxed WebAssembly processors.
#[derive(Parser, Debug)]
#[command(name = "weir", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Where the client commands find a running `weir serve`.
const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run weir: the HTTP API and every deployed application. Without
    /// brokers, on the embedded backend in --data-dir.
    Serve {
        /// A TOML configuration file (see the `config` module docs).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Data directory (default ./weir-data).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Address to serve HTTP on (default 127.0.0.1:8080; port 0 picks one).
        #[arg(long)]
        http: Option<String>,
        /// Kafka bootstrap servers (empty: the embedded backend).
        #[arg(long)]
        brokers: Option<String>,
        /// How often tasks commit, e.g. 100ms.
        #[arg(long)]
        commit_interval: Option<String>,
    },
    /// Deploy an application spec to a running weir (uploading the component
    /// files it names).
    Deploy {
        spec: PathBuf,
        #[arg(long, default_value = DEFAULT_SERVER)]
        server: String,
    },
    /// Upload a component to the registry under a name and version.
    Push {
        file: PathBuf,
        #[arg(long)]
        name: String,
        /// Default: the next number (1, 2, ...).
        #[arg(long)]
        version: Option<String>,
        #[arg(long, default_value = DEFAULT_SERVER)]
        server: String,
    },
    /// Send JSONL records from stdin to a topic (the `weir test` input format;
    /// "topic" may be omitted).
    Produce {
        topic: String,
        #[arg(long, default_value = DEFAULT_SERVER)]
        server: String,
        /// Produce straight to Kafka (bootstrap servers) instead of through a weir server.
        #[arg(long, env = "WEIR_BROKERS", hide_env_values = true)]
        brokers: Option<String>,
    },
    /// Print a topic's records as JSONL (the `weir test` output format).
    Consume {
        topic: String,
        #[arg(long, default_value = DEFAULT_SERVER)]
        server: String,
        /// Offset to start from, in each partition.
        #[arg(long, default_value_t = 0)]
        from: i64,
        /// Most records to print (default: all).
        #[arg(long)]
        limit: Option<usize>,
        /// Only this partition.
        #[arg(long)]
        partition: Option<u32>,
        /// Add each record's offset.
        #[arg(long)]
        offsets: bool,
        /// Read straight from Kafka (bootstrap servers) instead of through a weir server.
        #[arg(long, env = "WEIR_BROKERS", hide_env_values = true)]
        brokers: Option<String>,
        /// With --brokers: also records of open and aborted transactions
        /// (read_uncommitted); by default only committed records.
        #[arg(long)]
        uncommitted: bool,
    },
    /// Read an application's state: one key, or the entries of a store.
    Query {
        app: String,
        store: String,
        /// The key (text); without it, list entries.
        key: Option<String>,
        /// Only keys starting with this.
        #[arg(long)]
        prefix: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long, default_value = DEFAULT_SERVER)]
        server: String,
    },
    /// Show an application's status.
    Status {
        app: String,
        #[arg(long, default_value = DEFAULT_SERVER)]
        server: String,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
        /// Print it again every second (restore progress, lag, the
        /// cluster's instances) until interrupted.
        #[arg(long, conflicts_with = "json")]
        watch: bool,
    },
    /// Create a processor crate from a template: src/lib.rs with a native
    /// unit test, app.yaml, input.jsonl and expected.jsonl that pass.
    New {
        /// The folder to create; its name is the crate's and the app's.
        name: PathBuf,
        #[arg(long, value_enum, default_value = "stateless")]
        template: crate::author::Template,
        /// The weir-sdk folder (default: $WEIR_SDK, else the SDK beside this weir's sources).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Build a processor crate as a component (release, wasm32-wasip2;
    /// installs the target when missing), check it against the contract, and
    /// print its path, size, sha256 and contract version.
    Build {
        /// The crate's folder (default: the current one).
        dir: Option<PathBuf>,
    },
    /// The edit–build–swap loop of a processor folder: build, deploy to a
    /// local embedded `weir serve` (or --server), feed input.jsonl (or
    /// stdin), print new output records; on every source change rebuild and
    /// hot-swap, keeping the stores.
    Dev {
        /// The crate's folder (default: the current one).
        dir: Option<PathBuf>,
        /// Use this running server instead of starting one.
        #[arg(long)]
        server: Option<String>,
        /// Read input records (JSONL with "topic") from stdin instead of input.jsonl.
        #[arg(long)]
        stdin: bool,
    },
    /// Run a topology offline over a JSONL input file and print every output
    /// record (dead letters included) as JSONL, or compare it with an
    /// expected file.
    Test {
        /// A folder with app.yaml and input.jsonl (default: the current one).
        dir: Option<PathBuf>,
        /// The application spec (YAML or JSON; default DIR/app.yaml).
        #[arg(long)]
        spec: Option<PathBuf>,
        /// Input records, one JSON object per line (default DIR/input.jsonl).
        #[arg(long)]
        input: Option<PathBuf>,
        /// Compare the output with this JSONL file (per topic and partition,
        /// in order); print a diff and exit 1 when they differ.
        #[arg(long, value_name = "FILE")]
        expect: Option<PathBuf>,
        /// Write the output to the --expect file (default DIR/expected.jsonl).
        #[arg(long)]
        bless: bool,
        /// Use this component file for a processor: NAME=PATH (repeatable).
        #[arg(long = "component", value_name = "NAME=PATH")]
        components: Vec<String>,
        /// Also print records written to repartition topics.
        #[arg(long)]
        internal: bool,
        /// Timestamp (ms) of input records without one; without it such a
        /// record is an error.
        #[arg(long, value_name = "MS")]
        default_timestamp: Option<i64>,
    },
    /// Benchmarks (not tests): print measurements and a ratio against a
    /// baseline measured in the same run.
    Bench {
        #[command(subcommand)]
        which: BenchCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Hot swap of key-count v1 ⇄ v2 under load: upload time, upload-to-running
    /// time, and the longest pause of a task, per round.
    Swap {
        /// Directory of the built guest components (needs key_count.wasm and key_count_v2.wasm).
        #[arg(long, default_value = "target/wasm32-wasip2/guest")]
        guests: PathBuf,
        #[arg(long, default_value_t = 6)]
        rounds: usize,
    },
    /// The embedded backend, exactly-once: the raw read→write loop, a
    /// passthrough component, key-count and reservation; records/s and
    /// p50/p99 end-to-end latency; last line `ratio <passthrough/raw>`.
    Embedded {
        /// Directory of the built guest components.
        #[arg(long, default_value = "target/wasm32-wasip2/guest")]
        guests: PathBuf,
        /// Records of the throughput phase (200k lasted a quarter of a
        /// second, a third of it the 100 ms commit interval and task starts).
        #[arg(long, default_value_t = 1_000_000)]
        records: usize,
        /// Records per second offered in the latency phase.
        #[arg(long, default_value_t = 2_000)]
        latency_rate: usize,
        /// Run only these scenarios (comma-separated: raw, passthrough,
        /// key-count, reservation, windowed, sdk-windows), e.g. to profile one.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Times every scenario runs, in turn (a ratio is the median of the
        /// rounds' ratios: the machine's slow spells fall on all alike).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// One deploy and one hot swap of key-count for a cluster of
    /// --instances instances against one instance alone, in the same run:
    /// seconds until the deploy answers and every task runs, until the swap
    /// answers, and the longest task pause; last lines `ratio cluster/single
    /// deploy` and `ratio cluster/single swap`. `./dev bench-cluster` starts
    /// a broker first.
    Cluster {
        /// Bootstrap servers of the Kafka cluster.
        #[arg(long, env = "WEIR_BROKERS", hide_env_values = true)]
        brokers: String,
        /// Directory of the built guest components (key_count.wasm, key_count_v2.wasm).
        #[arg(long, default_value = "target/wasm32-wasip2/guest")]
        guests: PathBuf,
        #[arg(long, default_value_t = 3)]
        instances: usize,
        /// Ignored (`./dev bench-*` passes it to every bench).
        #[arg(long, hide = true)]
        kafka_streams: Option<PathBuf>,
    },
    /// Restore of a store of --keys keys: on Kafka (--brokers) from its
    /// changelog with an empty data dir, from a local checkpoint with a
    /// --tail-percent tail, and by Kafka Streams from the same changelog
    /// (--kafka-streams); on the embedded backend, a restart on a data dir
    /// with that store. Last lines `ratio checkpoint/full restore` and
    /// `ratio weir/kafka-streams restore`.
    Restore {
        /// Bootstrap servers of a Kafka cluster (without: the embedded backend only).
        #[arg(long, env = "WEIR_BROKERS", hide_env_values = true)]
        brokers: Option<String>,
        /// Directory of the built guest components.
        #[arg(long, default_value = "target/wasm32-wasip2/guest")]
        guests: PathBuf,
        /// The built Kafka Streams peer (tests/peers/kafka-streams).
        #[arg(long)]
        kafka_streams: Option<PathBuf>,
        /// Keys in the store.
        #[arg(long, default_value_t = 1_000_000)]
        keys: usize,
        /// Bytes per value.
        #[arg(long, default_value_t = 100)]
        value_bytes: usize,
        /// Keys written again to the changelog before the checkpoint restore, in percent.
        #[arg(long, default_value_t = 1.0)]
        tail_percent: f64,
    },
    /// Throughput (steady state), start-up, latency and memory on a Kafka
    /// cluster, exactly-once: raw rdkafka consume→produce, weir's
    /// passthrough, key-count and reservation, and the same two in Kafka
    /// Streams; last lines `ratio weir/kafka-streams key-count|reservation`
    /// and `ratio passthrough/raw`. `./dev bench-kafka` starts a broker and
    /// builds the peer first.
    Kafka {
        /// Bootstrap servers of the cluster to measure on.
        #[arg(long, env = "WEIR_BROKERS", hide_env_values = true)]
        brokers: String,
        /// Directory of the built guest components.
        #[arg(long, default_value = "target/wasm32-wasip2/guest")]
        guests: PathBuf,
        /// The built Kafka Streams peer (tests/peers/kafka-streams); without
        /// it the Kafka Streams scenarios are left out.
        #[arg(long)]
        kafka_streams: Option<PathBuf>,
        /// Records of the throughput phase, pre-produced.
        #[arg(long, default_value_t = 500_000)]
        records: usize,
        /// Records per second offered in the latency phase.
        #[arg(long, default_value_t = 1_000)]
        latency_rate: usize,
        /// Seconds the latency phase offers them.
        #[arg(long, default_value_t = 5)]
        latency_seconds: u64,
        /// Run only these scenarios (comma-separated: raw, passthrough,
        /// key-count, reservation, ks-key-count, ks-reservation), e.g. to
        /// profile one.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
    /// The reservation processor natively (SDK harness) and as a component,
    /// over the same records; prints ns/record and `ratio <component/native>`.
    ComponentVsNative {
        /// The reservation component (default: the workspace build output).
        #[arg(long)]
        component: Option<PathBuf>,
        /// Number of order records.
        #[arg(long, default_value_t = 100_000)]
        records: usize,
        /// Records per component call.
        #[arg(long, default_value_t = 256)]
        batch: usize,
    },
}

/// Logs go to stderr; `WEIR_LOG` (or `RUST_LOG`) filters them.
fn init_logging() {
    let filter = std::env::var("WEIR_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info,wasmtime=warn,cranelift=warn".to_owned());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::New { name, template, sdk } => {
            let sdk = crate::author::find_sdk(sdk.as_deref())?;
            crate::author::new_project(&name, template, &sdk)?;
            println!("created {} ({template:?} template, weir-sdk at {})", name.display(), sdk.display());
            println!("next: cd {} && cargo test && weir build && weir test --expect expected.jsonl", name.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Dev { dir, server, stdin } => {
            crate::dev::run(crate::dev::DevOptions { dir: dir.unwrap_or_else(|| PathBuf::from(".")), server, stdin })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Build { dir } => {
            let built = crate::author::build(&dir.unwrap_or_else(|| PathBuf::from(".")))?;
            println!("{}", crate::author::describe(&built));
            Ok(ExitCode::SUCCESS)
        }
        Command::Test { dir, spec, input, expect, bless, components, internal, default_timestamp } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from("."));
            let spec = spec.unwrap_or_else(|| dir.join("app.yaml"));
            let input = input.unwrap_or_else(|| dir.join("input.jsonl"));
            let expect = match (expect, bless) {
                (Some(e), _) => Some(e),
                (None, true) => Some(dir.join("expected.jsonl")),
                (None, false) => None,
            };
            let mut options = TestOptions { include_internal: internal, default_timestamp, ..TestOptions::default() };
            for c in components {
                let (name, path) =
                    c.split_once('=').ok_or_else(|| anyhow::anyhow!("--component takes NAME=PATH, got `{c}`"))?;
                options.components.insert(name.to_owned(), PathBuf::from(path));
            }
            let engine = Arc::new(WasmEngine::new(EngineConfig::default())?);
            let run = testdriver::run(&spec, &input, engine, &options)?;
            if expect.is_none() {
                let mut out = std::io::stdout().lock();
                for line in &run.outputs {
                    use std::io::Write;
                    writeln!(out, "{}", line.to_json())?;
                }
            }
            if let Some(e) = run.stopped {
                eprintln!("error: {e}");
                return Ok(ExitCode::from(1));
            }
            if let Some(first) = run.violations.first() {
                eprintln!(
                    "error: {} record(s) failed because a processor broke its contract (they were dead-lettered, \
                     as `weir serve` does); the first: {first}",
                    run.violations.len()
                );
                return Ok(ExitCode::from(1));
            }
            if let Some(expect) = expect {
                if bless {
                    std::fs::write(&expect, crate::author::bless(&run.outputs))?;
                    eprintln!("wrote {} ({} records)", expect.display(), run.outputs.len());
                    return Ok(ExitCode::SUCCESS);
                }
                let text = std::fs::read_to_string(&expect)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", expect.display()))?;
                if let Err(diff) = crate::author::compare(&text, &run.outputs) {
                    eprintln!("output differs from {} (- expected, + got):\n{diff}", expect.display());
                    return Ok(ExitCode::from(1));
                }
                eprintln!("ok: {} records match {}", run.outputs.len(), expect.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve { config, data_dir, http, brokers, commit_interval } => {
            let mut cfg = crate::config::Config::load(config.as_deref(), |k| std::env::var(k).ok())?;
            if let Some(d) = data_dir {
                cfg.data_dir = d;
            }
            if let Some(h) = http {
                cfg.http = h.parse().map_err(|e| anyhow::anyhow!("--http `{h}`: {e}"))?;
            }
            if let Some(b) = brokers {
                cfg.brokers = b;
            }
            if let Some(c) = commit_interval {
                cfg.commit_interval =
                    crate::topology::parse_duration(&c).map_err(|e| anyhow::anyhow!("--commit-interval: {e}"))?;
            }
            crate::serve::serve(cfg)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Deploy { spec, server } => {
            crate::client::deploy(&spec, server.trim_end_matches('/'))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Push { file, name, version, server } => {
            let answer = crate::client::push(&file, &name, version.as_deref(), server.trim_end_matches('/'))?;
            println!("{}", answer["reference"].as_str().unwrap_or_default());
            eprintln!(
                "pushed {} ({} bytes, sha256:{})",
                file.display(),
                answer["size"],
                answer["sha256"].as_str().unwrap_or("?")
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Produce { topic, server, brokers } => {
            let (bar, input) = crate::progress::stdin(&format!("producing to {topic}"));
            let n = match brokers.filter(|b| !b.is_empty()) {
                Some(brokers) => crate::backend::kafka::produce_jsonl(&brokers, &topic, input)? as u64,
                None => crate::client::produce(&topic, server.trim_end_matches('/'), input)?,
            };
            bar.finish_and_clear();
            eprintln!("produced {n} records to {topic}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Consume { topic, server, from, limit, partition, offsets, brokers, uncommitted } => {
            let mut out = std::io::stdout().lock();
            match brokers.filter(|b| !b.is_empty()) {
                Some(brokers) => {
                    let read =
                        crate::backend::kafka::ReadOptions { from, last: None, limit, partition, uncommitted, offsets };
                    crate::backend::kafka::consume(&brokers, &topic, &read, &mut out)?;
                }
                None => {
                    let server = server.trim_end_matches('/');
                    crate::client::consume(&topic, server, from, limit, partition, offsets, &mut out)?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Query { app, store, key, prefix, limit, server } => {
            crate::client::query(&app, &store, key.as_deref(), prefix.as_deref(), limit, server.trim_end_matches('/'))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { app, server, json, watch } => {
            if watch {
                crate::client::watch_status(&app, server.trim_end_matches('/'), std::time::Duration::from_secs(1))?;
            }
            crate::client::status(&app, server.trim_end_matches('/'), json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { which } => match which {
            BenchCommand::Swap { guests, rounds } => {
                crate::bench::swap(guests, rounds.max(1))?;
                Ok(ExitCode::SUCCESS)
            }
            BenchCommand::Embedded { guests, records, latency_rate, only, rounds } => {
                let rounds = rounds.max(1);
                let settings =
                    crate::bench::EmbeddedBench { guests, records, latency_rate, only, rounds, ..Default::default() };
                crate::bench::embedded(settings)?;
                Ok(ExitCode::SUCCESS)
            }
            BenchCommand::Cluster { brokers, guests, instances, kafka_streams: _ } => {
                crate::bench::cluster::run(crate::bench::cluster::ClusterBench { brokers, guests, instances })?;
                Ok(ExitCode::SUCCESS)
            }
            BenchCommand::Restore { brokers, guests, kafka_streams, keys, value_bytes, tail_percent } => {
                crate::bench::restore::run(crate::bench::restore::RestoreBench {
                    brokers: brokers.filter(|b| !b.is_empty()),
                    guests,
                    keys: keys.max(1),
                    value_bytes,
                    tail_percent,
                    partitions: 4,
                    workers: 2,
                    kafka_streams,
                })?;
                Ok(ExitCode::SUCCESS)
            }
            BenchCommand::Kafka { brokers, guests, kafka_streams, records, latency_rate, latency_seconds, only } => {
                crate::bench::kafka::run(crate::bench::kafka::KafkaBench {
                    only,
                    brokers,
                    guests,
                    records,
                    latency_rate,
                    latency_seconds,
                    kafka_streams,
                    commit_interval: std::time::Duration::from_millis(100),
                    workers: 2,
                    partitions: 4,
                })?;
                Ok(ExitCode::SUCCESS)
            }
            BenchCommand::ComponentVsNative { component, records, batch } => {
                crate::bench::component_vs_native(component, records, batch)?;
                Ok(ExitCode::SUCCESS)
            }
        },
    }
}
