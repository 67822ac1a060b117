//! weir's configuration: built-in defaults, then a TOML file, then `WEIR_*`
//! environment variables, then command-line flags. Every option is listed
//! here, with its default, in one place; durations are human-readable
//! (`100ms`, `30s`) and sizes too (`64MiB`).
//!
//! ```toml
//! data_dir = "./weir-data"          # WEIR_DATA_DIR
//! http = "127.0.0.1:8080"           # WEIR_HTTP
//! brokers = ""                      # WEIR_BROKERS: empty = the embedded backend
//! session_timeout = "10s"           # WEIR_SESSION_TIMEOUT: Kafka consumer group session
//! transaction_timeout = "10s"       # WEIR_TRANSACTION_TIMEOUT: Kafka aborts a transaction left open this long
//! cluster = ""                      # WEIR_CLUSTER: on Kafka, the cluster's catalog prefix; empty = deploys stay on this instance
//! instance_id = ""                  # WEIR_INSTANCE_ID: stable id on Kafka; empty = one kept in the data dir
//! advertised_url = ""               # WEIR_ADVERTISED_URL: this API's URL for other instances; empty = http://<bound address>
//! commit_interval = "100ms"         # WEIR_COMMIT_INTERVAL
//! max_batch = 1000                  # WEIR_MAX_BATCH: records read per task per poll
//! workers = 2                       # WEIR_WORKERS: processing threads per application
//! fsync = false                     # WEIR_FSYNC: fsync every commit (power-loss safety)
//! retention = "7d"                  # WEIR_RETENTION: embedded topics, by age
//! retention_bytes = "0"             # WEIR_RETENTION_BYTES: per partition, 0 = unlimited
//! retention_check = "30s"           # WEIR_RETENTION_CHECK: how often retention runs
//! max_instances = 256               # WEIR_MAX_INSTANCES: live wasm instances
//! max_upload = "50MiB"              # WEIR_MAX_UPLOAD: component upload limit
//! body_timeout = "30s"              # WEIR_BODY_TIMEOUT: longest wait for the next bytes of a request body
//! api_token = ""                    # WEIR_API_TOKEN: bearer token for mutating routes; empty = loopback only
//! api_token_reads = false           # WEIR_API_TOKEN_READS: require the token for reads too
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::topology::{parse_duration, parse_size};

/// The resolved configuration of a `weir serve` process.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub data_dir: PathBuf,
    pub http: SocketAddr,
    /// Kafka bootstrap servers; empty runs the embedded backend.
    pub brokers: String,
    /// Kafka consumer group session timeout: how soon a dead instance's
    /// partitions move to the others.
    pub session_timeout: Duration,
    /// Kafka's `transaction.timeout.ms` for weir's producers: the broker
    /// aborts a transaction of a stalled instance after this long (Kafka
    /// Streams' exactly-once default, 10 s).
    pub transaction_timeout: Duration,
    /// On Kafka: the prefix of the cluster's catalog topics
    /// ([`crate::cluster`]); instances with the same prefix are one cluster
    /// (a deploy to any of them runs on all). Empty: every instance is
    /// deployed to on its own.
    pub cluster: String,
    /// This instance's stable id on Kafka (transactional ids derive from
    /// it); empty = generated once and kept in the data dir.
    pub instance_id: String,
    /// The URL other instances reach this one's API at (interactive
    /// queries on Kafka); empty = `http://<bound address>`.
    pub advertised_url: String,
    /// How often each task commits its transaction.
    pub commit_interval: Duration,
    /// Most records a task reads per poll.
    pub max_batch: usize,
    /// Processing threads per application.
    pub workers: usize,
    /// fsync the write-ahead log on every commit.
    pub fsync: bool,
    /// Embedded topics drop records older than this (0 = keep forever).
    pub retention: Duration,
    /// Embedded topics keep at most this many bytes per partition (0 = unlimited).
    pub retention_bytes: u64,
    /// How often retention runs.
    pub retention_check: Duration,
    /// Most wasm instances alive at once.
    pub max_instances: u32,
    /// Largest component upload accepted.
    pub max_upload: u64,
    /// Longest wait for the next bytes of a request body (then 408).
    pub body_timeout: Duration,
    /// Bearer token required on mutating routes. Without one, weir serves
    /// on loopback only.
    pub api_token: Option<String>,
    /// Require the token on reads too.
    pub api_token_reads: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./weir-data"),
            http: SocketAddr::from(([127, 0, 0, 1], 8080)),
            brokers: String::new(),
            cluster: String::new(),
            session_timeout: Duration::from_secs(10),
            transaction_timeout: Duration::from_secs(10),
            instance_id: String::new(),
            advertised_url: String::new(),
            commit_interval: Duration::from_millis(100),
            max_batch: 1000,
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()).min(8),
            fsync: false,
            retention: Duration::from_secs(7 * 24 * 3600),
            retention_bytes: 0,
            retention_check: Duration::from_secs(30),
            max_instances: 256,
            max_upload: 50 << 20,
            body_timeout: Duration::from_secs(30),
            api_token: None,
            api_token_reads: false,
        }
    }
}

/// The TOML file: every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    http: Option<String>,
    brokers: Option<String>,
    cluster: Option<String>,
    session_timeout: Option<String>,
    transaction_timeout: Option<String>,
    instance_id: Option<String>,
    advertised_url: Option<String>,
    commit_interval: Option<String>,
    max_batch: Option<usize>,
    workers: Option<usize>,
    fsync: Option<bool>,
    retention: Option<String>,
    retention_bytes: Option<String>,
    retention_check: Option<String>,
    max_instances: Option<u32>,
    max_upload: Option<String>,
    body_timeout: Option<String>,
    api_token: Option<String>,
    api_token_reads: Option<bool>,
}

/// A configuration problem, naming where the bad value came from.
#[derive(Debug, Clone, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Defaults, then `file` (if any), then `WEIR_*` variables from `env`.
    pub fn load(file: Option<&Path>, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
            let f: FileConfig = toml::from_str(&text).map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
            config.apply(f, &format!("{}", path.display()))?;
        }
        let var = |name: &str| env(name).filter(|v| !v.is_empty());
        let from_env = FileConfig {
            data_dir: var("WEIR_DATA_DIR").map(PathBuf::from),
            http: var("WEIR_HTTP"),
            brokers: env("WEIR_BROKERS"),
            cluster: env("WEIR_CLUSTER"),
            session_timeout: var("WEIR_SESSION_TIMEOUT"),
            transaction_timeout: var("WEIR_TRANSACTION_TIMEOUT"),
            instance_id: var("WEIR_INSTANCE_ID"),
            advertised_url: var("WEIR_ADVERTISED_URL"),
            commit_interval: var("WEIR_COMMIT_INTERVAL"),
            max_batch: var("WEIR_MAX_BATCH")
                .map(|v| v.parse().map_err(|e| ConfigError(format!("WEIR_MAX_BATCH=`{v}`: {e}"))))
                .transpose()?,
            workers: var("WEIR_WORKERS")
                .map(|v| v.parse().map_err(|e| ConfigError(format!("WEIR_WORKERS=`{v}`: {e}"))))
                .transpose()?,
            fsync: var("WEIR_FSYNC")
                .map(|v| match v.as_str() {
                    "1" | "true" | "yes" => Ok(true),
                    "0" | "false" | "no" => Ok(false),
                    _ => Err(ConfigError(format!("WEIR_FSYNC=`{v}`: use true or false"))),
                })
                .transpose()?,
            retention: var("WEIR_RETENTION"),
            retention_bytes: var("WEIR_RETENTION_BYTES"),
            retention_check: var("WEIR_RETENTION_CHECK"),
            max_instances: var("WEIR_MAX_INSTANCES")
                .map(|v| v.parse().map_err(|e| ConfigError(format!("WEIR_MAX_INSTANCES=`{v}`: {e}"))))
                .transpose()?,
            max_upload: var("WEIR_MAX_UPLOAD"),
            body_timeout: var("WEIR_BODY_TIMEOUT"),
            api_token: var("WEIR_API_TOKEN"),
            api_token_reads: var("WEIR_API_TOKEN_READS")
                .map(|v| match v.as_str() {
                    "1" | "true" | "yes" => Ok(true),
                    "0" | "false" | "no" => Ok(false),
                    _ => Err(ConfigError(format!("WEIR_API_TOKEN_READS=`{v}`: use true or false"))),
                })
                .transpose()?,
        };
        config.apply(from_env, "environment")?;
        Ok(config)
    }

    fn apply(&mut self, f: FileConfig, source: &str) -> Result<(), ConfigError> {
        let bad = |key: &str, e: String| ConfigError(format!("{source}: {key}: {e}"));
        if let Some(v) = f.data_dir {
            self.data_dir = v;
        }
        if let Some(v) = f.http {
            self.http =
                v.parse().map_err(|e| bad("http", format!("`{v}` is not an address like 127.0.0.1:8080: {e}")))?;
        }
        if let Some(v) = f.brokers {
            self.brokers = v;
        }
        if let Some(v) = f.cluster {
            if !v.is_empty() && !crate::topology::valid_name(&v) {
                return Err(bad(
                    "cluster",
                    format!("`{v}`: use letters, digits, `-` and `_` (it prefixes topic names)"),
                ));
            }
            self.cluster = v;
        }
        if let Some(v) = f.instance_id {
            if !v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.') {
                return Err(bad("instance_id", format!("`{v}`: use letters, digits, `-`, `_` and `.`")));
            }
            self.instance_id = v;
        }
        if let Some(v) = f.advertised_url {
            if !(v.is_empty() || v.starts_with("http://") || v.starts_with("https://")) {
                return Err(bad("advertised_url", format!("`{v}` is not an http(s):// URL")));
            }
            self.advertised_url = v;
        }
        if let Some(v) = f.session_timeout {
            self.session_timeout = parse_duration(&v).map_err(|e| bad("session_timeout", e))?;
        }
        if let Some(v) = f.transaction_timeout {
            let timeout = parse_duration(&v).map_err(|e| bad("transaction_timeout", e))?;
            if timeout < Duration::from_secs(1) {
                return Err(bad("transaction_timeout", format!("`{v}` is under 1s")));
            }
            self.transaction_timeout = timeout;
        }
        if let Some(v) = f.commit_interval {
            self.commit_interval = parse_duration(&v).map_err(|e| bad("commit_interval", e))?;
        }
        if let Some(v) = f.max_batch {
            if v == 0 {
                return Err(bad("max_batch", "must be at least 1".into()));
            }
            self.max_batch = v;
        }
        if let Some(v) = f.workers {
            if v == 0 {
                return Err(bad("workers", "must be at least 1".into()));
            }
            self.workers = v;
        }
        if let Some(v) = f.fsync {
            self.fsync = v;
        }
        if let Some(v) = f.retention {
            self.retention =
                if v.trim() == "0" { Duration::ZERO } else { parse_duration(&v).map_err(|e| bad("retention", e))? };
        }
        if let Some(v) = f.retention_bytes {
            self.retention_bytes = parse_size(&v).map_err(|e| bad("retention_bytes", e))?;
        }
        if let Some(v) = f.retention_check {
            self.retention_check = parse_duration(&v).map_err(|e| bad("retention_check", e))?;
        }
        if let Some(v) = f.max_instances {
            self.max_instances = v.max(1);
        }
        if let Some(v) = f.api_token {
            self.api_token = Some(v).filter(|t| !t.is_empty());
        }
        if let Some(v) = f.api_token_reads {
            self.api_token_reads = v;
        }
        if let Some(v) = f.max_upload {
            self.max_upload = parse_size(&v).map_err(|e| bad("max_upload", e))?;
        }
        if let Some(v) = f.body_timeout {
            self.body_timeout = parse_duration(&v).map_err(|e| bad("body_timeout", e))?;
            if self.body_timeout.is_zero() {
                return Err(bad("body_timeout", "must be more than 0".into()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn defaults_then_file_then_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("weir.toml");
        std::fs::write(&file, "commit_interval = \"250ms\"\nmax_batch = 50\nhttp = \"127.0.0.1:9000\"\n").unwrap();
        let c = Config::load(Some(&file), env(&[("WEIR_MAX_BATCH", "70"), ("WEIR_DATA_DIR", "/tmp/x")])).unwrap();
        assert_eq!(c.commit_interval, Duration::from_millis(250));
        assert_eq!(c.max_batch, 70, "environment wins over the file");
        assert_eq!(c.http.port(), 9000);
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.retention, Config::default().retention);
    }

    #[test]
    fn bad_values_name_their_source_and_key() {
        let e = Config::load(None, env(&[("WEIR_COMMIT_INTERVAL", "often")])).unwrap_err();
        assert!(e.to_string().contains("environment: commit_interval"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("weir.toml");
        std::fs::write(&file, "comit_interval = \"1s\"\n").unwrap();
        let e = Config::load(Some(&file), env(&[])).unwrap_err();
        assert!(e.to_string().contains("unknown field `comit_interval`"), "{e}");
    }
}
