//! `/v1/apps`: deploy, status, list, delete.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;

use super::extract::NamePath;
use super::{ApiError, ApiResult, blocking, body_error};
use crate::node::{DeployError, Node};
use crate::topology::parse_spec;

pub fn routes() -> Router<Arc<Node>> {
    Router::new().route("/v1/apps", get(list)).route("/v1/cluster", get(cluster)).route(
        "/v1/apps/{name}",
        get(status).put(deploy).delete(remove).layer(DefaultBodyLimit::max(crate::topology::SPEC_MAX_BYTES)),
    )
}

/// Deployed applications with their state and lag.
#[utoipa::path(get, path = "/v1/apps", tag = "applications", responses((status = 200, description = "applications")))]
pub async fn list(State(node): State<Arc<Node>>) -> ApiResult<impl IntoResponse> {
    blocking(move || {
        let apps: Vec<_> = node
            .applications()
            .into_iter()
            .filter_map(|n| node.status(&n))
            .map(|s| json!({ "name": s.name, "state": s.state, "lag": s.lag }))
            .collect();
        Ok(Json(json!({ "apps": apps })))
    })
    .await
}

/// An application's status: tasks, partitions, positions and lag, component
/// versions per processor, counters, last errors, update history; its
/// `topology` (nodes and edges, see `Topology::describe`) and `spec`.
#[utoipa::path(get, path = "/v1/apps/{name}", tag = "applications", params(("name" = String, Path, description = "application")),
    responses((status = 200, description = "status"), (status = 404, description = "unknown application")))]
pub async fn status(State(node): State<Arc<Node>>, NamePath(name): NamePath<String>) -> ApiResult<impl IntoResponse> {
    blocking(move || {
        let view = node.cluster().and_then(|c| c.view(&name));
        let mut status = match (node.status(&name), &view) {
            (Some(s), _) => serde_json::to_value(s).expect("json"),
            // Deployed to the cluster, not running here yet.
            (None, Some(v)) if v["deleted"] == false => {
                serde_json::to_value(node.status_or_pending(&name)).expect("json")
            }
            _ => {
                return Err(ApiError::not_found("unknown-app", format!("no application `{name}` is deployed")));
            }
        };
        if let Some(view) = view {
            status["cluster"] = view;
        }
        // The graph and the spec it was compiled from: what the console
        // draws, and what it edits for a swap.
        if let Some(topology) = node.topology(&name) {
            status["topology"] = topology.describe();
            status["spec"] = serde_json::to_value(&topology.spec).expect("specs serialise");
        }
        Ok(Json(status))
    })
    .await
}

/// The cluster this instance belongs to: every instance (id, URL, alive,
/// what it runs) and every application's generation.
#[utoipa::path(get, path = "/v1/cluster", tag = "applications",
    responses((status = 200, description = "the cluster"), (status = 404, description = "this instance is in no cluster")))]
pub async fn cluster(State(node): State<Arc<Node>>) -> ApiResult<impl IntoResponse> {
    blocking(move || match node.cluster() {
        Some(c) => Ok(Json(c.overview())),
        None => Err(ApiError::not_found(
            "no-cluster",
            "this instance is in no cluster (start it on Kafka with `cluster` set: WEIR_CLUSTER)",
        )),
    })
    .await
}

/// The generation an `If-Match` header asks for (`3` or `"3"`).
fn expected_generation(headers: &axum::http::HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(axum::http::header::IF_MATCH) else { return Ok(None) };
    let text = value.to_str().unwrap_or_default().trim().trim_matches('"');
    text.parse().map(Some).map_err(|_| {
        ApiError::bad_request(
            "bad-if-match",
            format!("If-Match: `{text}` is not a generation number (see the status' cluster.generation)"),
        )
    })
}

/// Deploy a spec (YAML or JSON), or update a running application: a hot
/// swap when only components, configs or limits change (rolled back if the
/// new version fails `init` or traps before its first commit), a restart on
/// the new graph otherwise. Everything is validated before anything changes.
#[utoipa::path(put, path = "/v1/apps/{name}", tag = "applications", params(("name" = String, Path, description = "application")),
    request_body(content = String, content_type = "application/yaml", description = "the spec"),
    responses((status = 201, description = "created"), (status = 200, description = "updated"), (status = 400, description = "invalid spec: every problem with its field path"),
        (status = 202, description = "cluster: not yet applied by every live instance (the body says what each did)"),
        (status = 409, description = "an update of this application is in progress, or (cluster) the If-Match generation is not current"),
        (status = 422, description = "cannot deploy, or the update was rolled back (cluster: on every instance, naming the one that failed)")))]
pub async fn deploy(
    State(node): State<Arc<Node>>,
    NamePath(name): NamePath<String>,
    headers: axum::http::HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<impl IntoResponse> {
    let body = body.map_err(body_error)?;
    let expected = expected_generation(&headers)?;
    // Parsing and validating are CPU work on input of the caller's making:
    // off the async threads, so health checks and reads stay answered.
    blocking(move || {
        let text =
            std::str::from_utf8(&body).map_err(|_| ApiError::bad_request("bad-spec", "the spec is not UTF-8 text"))?;
        let spec = parse_spec(text).map_err(spec_error)?;
        if spec.name != name {
            return Err(ApiError::bad_request(
                "bad-spec",
                format!("name: the spec is named `{}` but was sent to /v1/apps/{name}", spec.name),
            ));
        }
        match node.deploy_expecting(spec, expected) {
            Ok(d) => {
                let code = match d.action {
                    "created" => StatusCode::CREATED,
                    // A cluster deploy not yet applied everywhere: status tells the rest.
                    "pending" => StatusCode::ACCEPTED,
                    _ => StatusCode::OK,
                };
                Ok((code, Json(d)))
            }
            Err(DeployError::Spec(e)) => Err(spec_error(e)),
            Err(e @ (DeployError::Busy(_) | DeployError::Gone(_))) => {
                Err(ApiError::new(StatusCode::CONFLICT, "update-in-progress", e.to_string()))
            }
            Err(e @ DeployError::UpdateFailed { .. }) => {
                Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "update-rolled-back", e.to_string()))
            }
            Err(
                e @ (DeployError::Component { .. }
                | DeployError::Topics { .. }
                | DeployError::Start { .. }
                | DeployError::OverLimit { .. }
                | DeployError::Incompatible { .. }),
            ) => Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "cannot-deploy", e.to_string())),
            Err(e @ DeployError::Conflict(_)) => {
                Err(ApiError::new(StatusCode::CONFLICT, "stale-generation", e.to_string()))
            }
            Err(e @ DeployError::Cluster(_)) => {
                Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "cluster-unavailable", e.to_string()))
            }
            Err(e @ DeployError::Internal(_)) => Err(ApiError::internal(e.to_string())),
        }
    })
    .await
}

fn spec_error(e: crate::topology::SpecError) -> ApiError {
    let problems: Vec<_> = e.problems.iter().map(|p| json!({ "path": p.path, "message": p.message })).collect();
    let mut err = ApiError::bad_request("bad-spec", e.to_string());
    err.extra = Some(json!({ "problems": problems }));
    err
}

/// Stop an application (final commit) and forget it, with its state.
#[utoipa::path(delete, path = "/v1/apps/{name}", tag = "applications", params(("name" = String, Path, description = "application")),
    responses((status = 204, description = "deleted"), (status = 404, description = "unknown application"),
        (status = 409, description = "a deploy or update of this application is in progress")))]
pub async fn remove(State(node): State<Arc<Node>>, NamePath(name): NamePath<String>) -> ApiResult<impl IntoResponse> {
    blocking(move || match node.undeploy(&name) {
        Ok(true) => Ok(StatusCode::NO_CONTENT),
        Ok(false) => Err(ApiError::not_found("unknown-app", format!("no application `{name}` is deployed"))),
        Err(e @ DeployError::Busy(_)) => Err(ApiError::new(StatusCode::CONFLICT, "update-in-progress", e.to_string())),
        Err(e @ DeployError::Conflict(_)) => {
            Err(ApiError::new(StatusCode::CONFLICT, "stale-generation", e.to_string()))
        }
        Err(e @ DeployError::Cluster(_)) => {
            Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "cluster-unavailable", e.to_string()))
        }
        Err(e) => Err(ApiError::internal(e.to_string())),
    })
    .await
}
