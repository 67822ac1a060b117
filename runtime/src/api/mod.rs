//! The HTTP API, versioned under `/v1`: JSON in and out, errors as
//! `{"error": code, "detail": message}` with the status that fits. One file
//! per resource; handlers are thin: the work happens in [`crate::node::Node`],
//! on blocking threads (RocksDB and wasm are synchronous).

pub mod apps;
pub mod components;
pub mod stores;
pub mod topics;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use utoipa::OpenApi;

use crate::node::Node;

/// An API error: status, a stable machine code, a message for people.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    pub extra: Option<serde_json::Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        ApiError { status, code, detail: detail.into(), extra: None }
    }
    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }
    pub fn not_found(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, detail)
    }
    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", detail)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.code, "detail": self.detail });
        if let (Some(extra), Some(map)) = (self.extra, body.as_object_mut())
            && let Some(e) = extra.as_object()
        {
            map.extend(e.clone());
        }
        (self.status, Json(body)).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// Runs blocking work off the async threads.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> ApiResult<T> + Send + 'static) -> ApiResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::internal(format!("worker thread: {e}")))?
}

/// The OpenAPI document, generated from the handlers' annotations.
#[derive(OpenApi)]
#[openapi(
    info(title = "weir", description = "Stream processing on Kafka with WebAssembly processors: components, applications, topics, state."),
    paths(
        apps::list, apps::status, apps::deploy, apps::remove,
        components::upload, components::list, components::describe_name, components::describe_version, components::remove,
        topics::list, topics::create, topics::produce, topics::read,
        stores::get_key, stores::scan,
        metrics, healthz, readyz,
    ),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Prometheus metrics of every application.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text format")))]
pub async fn metrics(State(node): State<Arc<Node>>) -> ApiResult<impl IntoResponse> {
    blocking(move || Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], node.metrics()))).await
}

/// Liveness.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "alive")))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: the data dir is open and saved applications were resumed.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses((status = 200, description = "ready")))]
pub async fn readyz() -> &'static str {
    "ready"
}

async fn openapi() -> impl IntoResponse {
    Json(ApiDoc::openapi())
}

/// Bearer-token check: mutating routes always (when a token is configured),
/// reads when `api_token_reads` is set. Health and readiness stay open.
async fn authorize(State(node): State<Arc<Node>>, request: Request, next: Next) -> Response {
    let Some(token) = node.config.api_token.as_deref() else { return next.run(request).await };
    let path = request.uri().path();
    let mutating = !matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let open = path == "/healthz" || path == "/readyz";
    if open || (!mutating && !node.config.api_token_reads) {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this route needs a bearer token: send `Authorization: Bearer <token>` (the CLI reads WEIR_API_TOKEN)",
        )
        .into_response(),
        Some(t) if constant_time_eq(t.as_bytes(), token.as_bytes()) => next.run(request).await,
        Some(_) => {
            ApiError::new(StatusCode::FORBIDDEN, "forbidden", "the bearer token is not the one this weir accepts")
                .into_response()
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The router of the whole API.
pub fn router(node: Arc<Node>) -> Router {
    let upload_limit = usize::try_from(node.config.max_upload).unwrap_or(usize::MAX);
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/openapi.json", get(openapi))
        .merge(apps::routes())
        .merge(topics::routes())
        .merge(stores::routes())
        .merge(components::routes())
        .fallback(|| async { ApiError::not_found("not-found", "no such route (the API lives under /v1)") })
        .layer(axum::middleware::from_fn_with_state(node.clone(), authorize))
        .layer(axum::middleware::from_fn_with_state(upload_limit, refuse_declared_oversize))
        .layer(DefaultBodyLimit::max(upload_limit))
        .with_state(node)
}

/// Answers 413 from the `Content-Length` header alone, before any of the body
/// is read. Without this the body limit trips only after `limit` bytes have
/// been read, the connection closes under a client still writing, and the
/// client sees a broken pipe instead of the reason. A client that sends
/// `Expect: 100-continue` (weir's own does for uploads) never sends the body.
async fn refuse_declared_oversize(State(limit): State<usize>, request: Request, next: Next) -> Response {
    let declared =
        request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(length) if length > limit as u64 => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            format!("request body too large: {length} bytes declared, the limit is {limit} (WEIR_MAX_UPLOAD)"),
        )
        .into_response(),
        _ => next.run(request).await,
    }
}

/// Converts axum's body-limit rejection into our error shape.
pub fn body_error(e: axum::extract::rejection::BytesRejection) -> ApiError {
    let status = e.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(status, "too-large", format!("request body too large: {e}"))
    } else {
        ApiError::new(status, "bad-body", e.to_string())
    }
}
