//! `/v1/apps/{app}/stores/{store}`: read an application's state: one key, or
//! a prefix scan across partitions (or within one).
//!
//! Any instance answers for any key: the key's partition is murmur2 of the
//! key modulo the store's partitions; on Kafka, the task owning it may run
//! on another instance, found in the instance directory
//! ([`crate::backend::kafka::directory`]), and the request is forwarded
//! there (with `local=true`, so it is never forwarded twice). Answers name
//! the instance that served them (`served_by`, on Kafka). Reads see
//! committed state.

use std::ops::Bound;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;

use super::extract::{ApiQuery, NamePath};
use super::{ApiError, ApiResult, blocking};
use crate::jsonl::render_bytes;
use crate::node::Node;
use crate::node::TaskLocation;
use crate::partitioner::partition_for_key;
use crate::task::TaskId;
use crate::topology::{StoreOwner, Topology};

pub fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/v1/apps/{app}/stores/{store}", get(scan))
        .route("/v1/apps/{app}/stores/{store}/keys/{key}", get(get_key))
}

/// The store's registered id and its partition count.
fn locate(node: &Node, app: &str, store: &str) -> ApiResult<(Arc<Topology>, u32, u32)> {
    let topology = node
        .topology(app)
        .ok_or_else(|| ApiError::not_found("unknown-app", format!("no application `{app}` is running")))?;
    let sid = topology.store(store).ok_or_else(|| {
        let names: Vec<&str> = topology.stores.iter().map(|s| s.name.as_str()).collect();
        ApiError::not_found(
            "unknown-store",
            format!("application `{app}` has no store `{store}` (stores: {})", names.join(", ")),
        )
    })?;
    let partitions = match topology.stores[sid].owner {
        StoreOwner::Global(_) => 1,
        _ => topology.subtopologies[topology.stores[sid].subtopology.expect("task store")].partitions,
    };
    let id = node.backend.register_store(app, store).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok((topology, id, partitions))
}

/// Where a store partition is read: here, or the URL of the instance
/// running its task.
fn route(
    node: &Node,
    app: &str,
    topology: &Topology,
    store: &str,
    partition: u32,
    local_only: bool,
) -> ApiResult<Option<String>> {
    let sid = topology.store(store).expect("located");
    let Some(subtopology) = topology.stores[sid].subtopology else {
        return Ok(None); // Global tables are complete on every instance.
    };
    match node.locate_task(app, TaskId { subtopology, partition }) {
        TaskLocation::Here => Ok(None),
        TaskLocation::At(url) if !local_only && Some(&url) != node.advertised_url().as_ref() => Ok(Some(url)),
        TaskLocation::At(_) | TaskLocation::Unknown => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not-available",
            format!(
                "partition {partition} of store `{store}` is not served by this instance{}; retry shortly",
                if local_only { "" } else { " and no instance claims it now (a rebalance is moving it)" }
            ),
        )),
    }
}

/// Forwards a read to the instance at `url` and relays its answer.
fn forward(node: &Node, url: &str, path: &str, query: &[(&str, String)]) -> ApiResult<serde_json::Value> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(10)))
        .build()
        .into();
    let mut request = agent.get(format!("{url}{path}"));
    for (k, v) in query {
        request = request.query(k, v);
    }
    if let Some(token) = &node.config.api_token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let unreachable =
        |e: String| ApiError::new(StatusCode::BAD_GATEWAY, "instance-unreachable", format!("forwarding to {url}: {e}"));
    let response = request.call().map_err(|e| unreachable(e.to_string()))?;
    let status = response.status().as_u16();
    let text = response.into_body().read_to_string().map_err(|e| unreachable(e.to_string()))?;
    let body: serde_json::Value = serde_json::from_str(&text).map_err(|e| unreachable(format!("not JSON: {e}")))?;
    if status >= 400 {
        let code = match body["error"].as_str().unwrap_or_default() {
            "unknown-key" => "unknown-key",
            "unknown-store" => "unknown-store",
            "unknown-app" => "unknown-app",
            "not-available" => "not-available",
            "unauthorized" => "unauthorized",
            "forbidden" => "forbidden",
            _ => "forwarded-error",
        };
        let detail = body["detail"].as_str().unwrap_or_default().to_owned();
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
        return Err(ApiError::new(status, code, format!("{detail} (at {url})")));
    }
    Ok(body)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct KeyQuery {
    /// Answer from this instance's state only; never forward.
    local: Option<bool>,
}

/// One key of a store (text key), from its partition (murmur2 of the key),
/// read here or at the instance that runs the partition's task.
#[utoipa::path(get, path = "/v1/apps/{app}/stores/{store}/keys/{key}", tag = "state",
    params(("app" = String, Path, description = "application"), ("store" = String, Path, description = "store"), ("key" = String, Path, description = "key"), KeyQuery),
    responses((status = 200, description = "the value"), (status = 404, description = "unknown application, store or key"),
        (status = 503, description = "the partition is moving between instances")))]
pub async fn get_key(
    State(node): State<Arc<Node>>,
    NamePath((app, store, key)): NamePath<(String, String, String)>,
    ApiQuery(q): ApiQuery<KeyQuery>,
) -> ApiResult<impl IntoResponse> {
    blocking(move || {
        let (topology, id, partitions) = locate(&node, &app, &store)?;
        let partition = if partitions == 1 { 0 } else { partition_for_key(key.as_bytes(), partitions) };
        if let Some(url) = route(&node, &app, &topology, &store, partition, q.local.unwrap_or(false))? {
            let path = format!("/v1/apps/{app}/stores/{store}/keys/{}", urlencode(&key));
            return forward(&node, &url, &path, &[("local", "true".into())]).map(Json);
        }
        let value = node
            .backend
            .open_store(id, partition, &store)
            .get(key.as_bytes())
            .map_err(|e| ApiError::internal(e.to_string()))?;
        match value {
            Some(v) => {
                let mut answer = json!({ "key": key, "partition": partition, "value": render_bytes(Some(&v)) });
                served_by(&node, &mut answer);
                Ok(Json(answer))
            }
            None => Err(ApiError::not_found(
                "unknown-key",
                format!("store `{store}` of `{app}` has no key `{key}` (partition {partition})"),
            )),
        }
    })
    .await
}

/// On Kafka, answers name the instance that served them.
fn served_by(node: &Node, answer: &mut serde_json::Value) {
    if node.on_kafka() {
        answer["served_by"] = json!(node.advertised_url());
    }
}

/// Percent-encodes a path segment.
fn urlencode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ScanQuery {
    prefix: Option<String>,
    limit: Option<usize>,
    /// Only this partition of the store.
    partition: Option<u32>,
    /// Answer from this instance's state only; never forward.
    local: Option<bool>,
}

/// Entries of a store across its partitions (or within one), optionally
/// under a prefix; each partition read where its task runs.
#[utoipa::path(get, path = "/v1/apps/{app}/stores/{store}", tag = "state",
    params(("app" = String, Path, description = "application"), ("store" = String, Path, description = "store"), ScanQuery),
    responses((status = 200, description = "entries"), (status = 404, description = "unknown application or store"),
        (status = 503, description = "a partition is moving between instances")))]
pub async fn scan(
    State(node): State<Arc<Node>>,
    NamePath((app, store)): NamePath<(String, String)>,
    ApiQuery(q): ApiQuery<ScanQuery>,
) -> ApiResult<impl IntoResponse> {
    blocking(move || {
        let (topology, id, partitions) = locate(&node, &app, &store)?;
        let limit = q.limit.unwrap_or(100).min(10_000);
        let prefix = q.prefix.unwrap_or_default();
        let wanted: Vec<u32> = match q.partition {
            Some(p) if p < partitions => vec![p],
            Some(p) => {
                return Err(ApiError::bad_request(
                    "bad-request",
                    format!("store `{store}` has {partitions} partition(s); there is no partition {p}"),
                ));
            }
            None => (0..partitions).collect(),
        };
        let end = crate::state::prefix_end(prefix.as_bytes());
        let mut entries = Vec::new();
        for p in wanted {
            let room = limit.saturating_sub(entries.len());
            if room == 0 {
                break;
            }
            if let Some(url) = route(&node, &app, &topology, &store, p, q.local.unwrap_or(false))? {
                let query = [
                    ("prefix", prefix.clone()),
                    ("limit", room.to_string()),
                    ("partition", p.to_string()),
                    ("local", "true".to_owned()),
                ];
                let answer = forward(&node, &url, &format!("/v1/apps/{app}/stores/{store}"), &query)?;
                entries.extend(answer["entries"].as_array().cloned().unwrap_or_default());
                continue;
            }
            let upper = end.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
            let found = node
                .backend
                .open_store(id, p, &store)
                .range(Bound::Included(prefix.as_bytes()), upper, room)
                .map_err(|e| ApiError::internal(e.to_string()))?;
            for (k, v) in found {
                let mut entry =
                    json!({ "key": render_bytes(Some(&k)), "partition": p, "value": render_bytes(Some(&v)) });
                served_by(&node, &mut entry);
                entries.push(entry);
            }
        }
        Ok(Json(json!({ "entries": entries })))
    })
    .await
}
