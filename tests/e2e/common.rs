//! Helpers shared by the end-to-end tests.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use weir::jsonl::OutputLine;
use weir::record::Record;
use weir::task::AppRuntime;
use weir::testdriver::{OfflineRunner, load_components};
use weir::topology::{Topology, parse_spec};
use weir::wasm::{EngineConfig, WasmEngine};

/// One engine for the whole test binary (it owns an epoch thread and a pool).
pub fn engine() -> Arc<WasmEngine> {
    static ENGINE: OnceLock<Arc<WasmEngine>> = OnceLock::new();
    ENGINE.get_or_init(|| Arc::new(WasmEngine::new(EngineConfig::default()).expect("engine"))).clone()
}

/// A runner for a spec given as YAML; `{guests}` in it is replaced by the
/// directory of built guest components.
pub fn runner(spec_yaml: &str) -> OfflineRunner {
    let yaml = spec_yaml.replace("{guests}", &weir_tests::guests_dir().display().to_string());
    let topology = Topology::compile(parse_spec(&yaml).expect("spec parses")).expect("spec is valid");
    let engine = engine();
    let components = load_components(&topology, Path::new("."), &engine, &BTreeMap::new()).expect("components load");
    let app = Arc::new(AppRuntime { topology: Arc::new(topology), engine, components });
    OfflineRunner::new(app).expect("tasks start")
}

/// A record with a text key and value.
pub fn rec(key: &str, value: &str) -> Record {
    Record { key: Some(key.as_bytes().to_vec()), value: Some(value.as_bytes().to_vec()), timestamp: 0, headers: vec![] }
}

/// The value of a header of an output line, as text.
pub fn header(line: &OutputLine, name: &str) -> Option<String> {
    line.headers.iter().find(|(n, _)| n == name).map(|(_, v)| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

/// Output lines on `topic`.
pub fn on_topic<'a>(lines: &'a [OutputLine], topic: &str) -> Vec<&'a OutputLine> {
    lines.iter().filter(|l| l.topic == topic).collect()
}

/// Values of output lines on `topic`, as text.
pub fn values(lines: &[OutputLine], topic: &str) -> Vec<String> {
    on_topic(lines, topic)
        .iter()
        .map(|l| match &l.value {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect()
}
