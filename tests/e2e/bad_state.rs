//! Bad state: weir refuses to run on a data dir that is foreign, damaged,
//! of another format, or that it may not write, with an error a person can
//! act on; a disk that fills up mid-run stops processing with a clear error
//! and no corruption: after space returns, exactly-once still holds.

use std::time::Duration;

use serde_json::Value;
use weir::state::rocks::Db;

use crate::server::{Options, Server, write_spec};

fn refused(data_dir: &std::path::Path, options: Options) -> String {
    let (code, log) = Server::start_failing(data_dir, options);
    assert_ne!(code, 0, "weir serve must exit with an error:\n{log}");
    log
}

/// A data dir holding a (stopped) weir database.
fn used_data_dir(dir: &std::path::Path) -> std::path::PathBuf {
    let data = dir.join("data");
    let mut s = Server::start(&data, Options::default());
    s.stop();
    data
}

#[test]
fn a_foreign_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("thesis.tex"), "\\documentclass{article}").unwrap();
    let log = refused(&data, Options::default());
    assert!(log.contains("is not a weir data dir"), "{log}");
    assert!(data.join("thesis.tex").exists(), "nothing of it is touched");
}

#[test]
fn a_data_dir_missing_its_current_file_is_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let data = used_data_dir(dir.path());
    std::fs::remove_file(data.join("CURRENT")).unwrap();
    let log = refused(&data, Options::default());
    assert!(log.contains("is damaged or unreadable"), "{log}");
    assert!(log.contains("will not run on inconsistent state"), "{log}");
}

#[test]
fn a_truncated_manifest_is_damage() {
    let dir = tempfile::tempdir().unwrap();
    let data = used_data_dir(dir.path());
    let manifest = std::fs::read_dir(&data)
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| e.file_name().to_string_lossy().starts_with("MANIFEST"))
        .expect("a manifest")
        .path();
    let len = std::fs::metadata(&manifest).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&manifest).unwrap().set_len(len / 3).unwrap();
    let log = refused(&data, Options::default());
    assert!(log.contains("is damaged or unreadable"), "{log}");
}

#[test]
fn another_data_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = used_data_dir(dir.path());
    {
        let db = Db::open(&data, false).unwrap();
        let mut batch = rocksdb::WriteBatch::default();
        db.put_meta(&mut batch, "format", b"weir-data/2");
        db.write(batch).unwrap();
    }
    let log = refused(&data, Options::default());
    assert!(log.contains("was written in format `weir-data/2`"), "{log}");
}

#[test]
fn a_store_of_another_format_keeps_its_application_from_running() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let spec = write_spec(dir.path(), "kc.yaml", crate::crash::specs::KEY_COUNT_EOS);
    let mut server = Server::start(&data, Options::default());
    server.deploy(&spec);
    server.produce("events", "{\"key\":\"a\",\"value\":\"1\"}\n").unwrap();
    server.wait_idle("key-count", Duration::from_secs(30));
    server.stop();
    {
        let db = Db::open(&data, false).unwrap();
        let found = db.get_meta("store/key-count/counts").unwrap().expect("registered store");
        let mut meta: Value = serde_json::from_slice(&found).unwrap();
        meta["format"] = 7.into();
        let mut batch = rocksdb::WriteBatch::default();
        db.put_meta(&mut batch, "store/key-count/counts", meta.to_string().as_bytes());
        db.write(batch).unwrap();
    }
    let server = Server::start(&data, Options::default());
    let status = server.get("/v1/apps/key-count").unwrap();
    let state = status["state"].as_str().unwrap();
    assert!(state.starts_with("failed") && state.contains("store format 7"), "{status:#}");
}

#[test]
fn a_data_dir_weir_may_not_write_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = used_data_dir(dir.path());
    // Root ignores permissions, so the server runs as `nobody`, who may read
    // but not write the root-owned directory.
    let mut perms = std::fs::metadata(dir.path()).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(dir.path(), perms).unwrap();
    let log = refused(&data, Options { uid: Some(65534), ..Options::default() });
    assert!(log.contains("data dir") && log.to_lowercase().contains("permission denied"), "{log}");
}

#[test]
fn a_full_disk_stalls_processing_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let spec = write_spec(dir.path(), "kc.yaml", crate::crash::specs::KEY_COUNT_EOS);
    // Deploy with room to spare (components and their compiled form go to the data dir).
    let mut server = Server::start(&data, Options::default());
    server.deploy(&spec);
    server.stop();
    // Then a disk that is full once any file of the data dir grows past 6 MiB.
    let limited =
        Options { file_size_limit: Some(6 << 20), commit_interval: Some("20ms".into()), ..Options::default() };
    let mut server = Server::start(&data, limited);
    let mut sent = 0;
    let mut refused = None;
    for round in 0..300 {
        let chunk: String =
            (0..2000).map(|i| format!("{{\"key\":\"k{}\",\"value\":\"{:0>200}\"}}\n", i % 300, round)).collect();
        match server.produce("events", &chunk) {
            Ok(_) => sent += 2000,
            Err(e) => {
                refused = Some(format!("{e:#}"));
                break;
            }
        }
    }
    // Writes now fail: the produce API says why, and so does every task that
    // had work to commit (it stalls, and will retry).
    let refused =
        refused.unwrap_or_else(|| panic!("the disk never filled after {sent} records\n{}", server.log_tail()));
    assert!(refused.contains("503 storage-failure") && refused.contains("File too large"), "{refused}");
    std::thread::sleep(Duration::from_millis(500));
    let status = server.get("/v1/apps/key-count").unwrap();
    for t in status["tasks"].as_array().unwrap() {
        if t["state"] == "stalled" {
            let error = t["error"].as_str().unwrap();
            assert!(error.contains("commit failed") && error.contains("File too large"), "{error}");
        }
    }
    server.kill();
    // Space is back: restart without the limit; everything committed is
    // intact and processing completes exactly once.
    let server = Server::start(&data, Options::default());
    server.wait_idle("key-count", Duration::from_secs(120));
    let mut inputs = std::collections::BTreeMap::new();
    for r in server.consume_all("events") {
        *inputs.entry(r["key"].to_string()).or_insert(0i64) += 1;
    }
    let mut counts: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
    for r in server.consume_all("counts") {
        counts.entry(r["key"].to_string()).or_default().push(r["value"]["count"].as_i64().unwrap());
    }
    for (key, n) in &inputs {
        assert_eq!(counts[key], (1..=*n).collect::<Vec<_>>(), "key {key}");
    }
}
