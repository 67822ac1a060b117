//! The HTTP API, versioned under `/v1`: JSON in and out, errors as
//! `{"error": code, "detail": message}` with the status that fits. One file
//! per resource; handlers are thin: the work happens in [`crate::node::Node`],
//! on blocking threads (RocksDB and wasm are synchronous).

mod apps;
mod components;
mod stores;
mod topics;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

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

/// The router of the whole API.
pub fn router(node: Arc<Node>) -> Router {
    let upload_limit = usize::try_from(node.config.max_upload).unwrap_or(usize::MAX);
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ready" }))
        .merge(apps::routes())
        .merge(topics::routes())
        .merge(stores::routes())
        .merge(components::routes())
        .fallback(|| async { ApiError::not_found("not-found", "no such route (the API lives under /v1)") })
        .layer(DefaultBodyLimit::max(upload_limit))
        .with_state(node)
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
