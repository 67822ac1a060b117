//! `/v1/apps/{app}/stores/{store}`: read an application's state: one key, or
//! a prefix scan across partitions.

use std::ops::Bound;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, ApiResult, blocking};
use crate::jsonl::render_bytes;
use crate::node::Node;
use crate::partitioner::partition_for_key;
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

/// One key of a store (text key), from its partition (murmur2 of the key).
#[utoipa::path(get, path = "/v1/apps/{app}/stores/{store}/keys/{key}", tag = "state",
    params(("app" = String, Path, description = "application"), ("store" = String, Path, description = "store"), ("key" = String, Path, description = "key")),
    responses((status = 200, description = "the value"), (status = 404, description = "unknown application, store or key")))]
pub async fn get_key(
    State(node): State<Arc<Node>>,
    Path((app, store, key)): Path<(String, String, String)>,
) -> ApiResult<impl IntoResponse> {
    blocking(move || {
        let (_, id, partitions) = locate(&node, &app, &store)?;
        let partition = if partitions == 1 { 0 } else { partition_for_key(key.as_bytes(), partitions) };
        let value = node
            .backend
            .open_store(id, partition, &store)
            .get(key.as_bytes())
            .map_err(|e| ApiError::internal(e.to_string()))?;
        match value {
            Some(v) => Ok(Json(json!({ "key": key, "partition": partition, "value": render_bytes(Some(&v)) }))),
            None => Err(ApiError::not_found(
                "unknown-key",
                format!("store `{store}` of `{app}` has no key `{key}` (partition {partition})"),
            )),
        }
    })
    .await
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ScanQuery {
    prefix: Option<String>,
    limit: Option<usize>,
}

/// Entries of a store across its partitions, optionally under a prefix.
#[utoipa::path(get, path = "/v1/apps/{app}/stores/{store}", tag = "state",
    params(("app" = String, Path, description = "application"), ("store" = String, Path, description = "store"), ScanQuery),
    responses((status = 200, description = "entries"), (status = 404, description = "unknown application or store")))]
pub async fn scan(
    State(node): State<Arc<Node>>,
    Path((app, store)): Path<(String, String)>,
    Query(q): Query<ScanQuery>,
) -> ApiResult<impl IntoResponse> {
    blocking(move || {
        let (_, id, partitions) = locate(&node, &app, &store)?;
        let limit = q.limit.unwrap_or(100).min(10_000);
        let prefix = q.prefix.unwrap_or_default().into_bytes();
        let end = crate::state::prefix_end(&prefix);
        let mut entries = Vec::new();
        for p in 0..partitions {
            let room = limit.saturating_sub(entries.len());
            if room == 0 {
                break;
            }
            let upper = end.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
            let found = node
                .backend
                .open_store(id, p, &store)
                .range(Bound::Included(&prefix), upper, room)
                .map_err(|e| ApiError::internal(e.to_string()))?;
            for (k, v) in found {
                entries.push(json!({ "key": render_bytes(Some(&k)), "partition": p, "value": render_bytes(Some(&v)) }));
            }
        }
        Ok(Json(json!({ "entries": entries })))
    })
    .await
}
