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

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a topology offline over a JSONL input file and print every output
    /// record (dead letters included) as JSONL.
    Test {
        /// The application spec (YAML or JSON).
        #[arg(long)]
        spec: PathBuf,
        /// Input records, one JSON object per line.
        #[arg(long)]
        input: PathBuf,
        /// Use this component file for a processor: NAME=PATH (repeatable).
        #[arg(long = "component", value_name = "NAME=PATH")]
        components: Vec<String>,
        /// Also print records written to repartition topics.
        #[arg(long)]
        internal: bool,
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
        Command::Test {
            spec,
            input,
            components,
            internal,
        } => {
            let mut options = TestOptions {
                include_internal: internal,
                ..TestOptions::default()
            };
            for c in components {
                let (name, path) = c
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("--component takes NAME=PATH, got `{c}`"))?;
                options
                    .components
                    .insert(name.to_owned(), PathBuf::from(path));
            }
            let engine = Arc::new(WasmEngine::new(EngineConfig::default())?);
            let run = testdriver::run(&spec, &input, engine, &options)?;
            let mut out = std::io::stdout().lock();
            for line in &run.outputs {
                use std::io::Write;
                writeln!(out, "{}", line.to_json())?;
            }
            match run.stopped {
                None => Ok(ExitCode::SUCCESS),
                Some(e) => {
                    eprintln!("error: {e}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        Command::Bench { which } => match which {
            BenchCommand::ComponentVsNative {
                component,
                records,
                batch,
            } => {
                crate::bench::component_vs_native(component, records, batch)?;
                Ok(ExitCode::SUCCESS)
            }
        },
    }
}
