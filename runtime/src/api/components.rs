//! `/v1/components`: upload (validated and precompiled at upload), list.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;

use super::{ApiError, ApiResult, blocking, body_error};
use crate::node::Node;
use crate::wasm::LoadError;

pub fn routes() -> Router<Arc<Node>> {
    Router::new().route("/v1/components", get(list).post(upload))
}

async fn upload(State(node): State<Arc<Node>>, body: Result<Bytes, BytesRejection>) -> ApiResult<impl IntoResponse> {
    let body = body.map_err(body_error)?;
    blocking(move || match node.registry.add(&body) {
        Ok(c) => Ok((
            StatusCode::CREATED,
            Json(json!({
                "sha256": c.sha256(),
                "reference": format!("sha256:{}", c.sha256()),
                "size": c.size(),
                "exports": c.exports(),
            })),
        )),
        Err(e @ LoadError::Internal(_)) => Err(ApiError::internal(e.to_string())),
        Err(e) => Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "bad-component", e.to_string())),
    })
    .await
}

async fn list(State(node): State<Arc<Node>>) -> ApiResult<impl IntoResponse> {
    blocking(move || Ok(Json(json!({ "components": node.registry.list() })))).await
}
