//! The HTTP API, versioned under `/v1`: JSON in and out, errors as
//! `{"error": code, "detail": message}` with the status that fits. One file
//! per resource; handlers are thin: the work happens in [`crate::node::Node`],
//! on blocking threads (RocksDB and wasm are synchronous).

pub mod apps;
pub mod components;
pub mod console;
pub mod extract;
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
        apps::list, apps::status, apps::deploy, apps::remove, apps::cluster,
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

async fn openapi(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let token = node.config.api_token.is_some();
    Json(document(token, token && node.config.api_token_reads))
}

/// The OpenAPI document: generated from the handlers' annotations, then
/// completed in one place with what every operation shares: its security,
/// the error answers every route can give (in the one error shape), response
/// schemas, the real types of request bodies and the rule of names. The
/// security declared is this server's: the bearer token on mutating routes
/// when one is configured (`token`), on reads too with `token_reads`.
pub fn document(token: bool, token_reads: bool) -> serde_json::Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serialises");
    let error_ref = json!({ "$ref": "#/components/schemas/Error" });
    doc["components"]["schemas"]["Error"] = json!({
        "type": "object",
        "description": "Every error: a stable machine code and a message for people (some add fields, e.g. `problems`).",
        "required": ["error", "detail"],
        "properties": { "error": { "type": "string" }, "detail": { "type": "string" } },
    });
    let name_schema = json!({
        "type": "string", "minLength": 1, "maxLength": crate::topology::NAME_MAX, "pattern": "^[a-zA-Z0-9._-]*[a-zA-Z0-9_-][a-zA-Z0-9._-]*$",
    });
    let body_types: &[(&str, &str, serde_json::Value)] = &[
        (
            "/v1/components",
            "post",
            json!({
                "application/wasm": { "schema": { "type": "string", "format": "binary" } },
                "multipart/form-data": { "schema": {
                    "type": "object", "required": ["file"],
                    "properties": {
                        "file": { "type": "string", "format": "binary" },
                        "name": name_schema.clone(), "version": name_schema.clone(),
                    },
                } },
            }),
        ),
        (
            "/v1/apps/{name}",
            "put",
            json!({
                "application/yaml": { "schema": { "type": "string" } },
                "application/json": { "schema": { "type": "object" } },
            }),
        ),
        (
            "/v1/topics/{topic}/records",
            "post",
            json!({
                "application/x-ndjson": { "schema": { "type": "string" } },
            "text/plain": { "schema": { "type": "string" } },
            }),
        ),
        (
            "/v1/topics",
            "post",
            json!({
                "application/json": { "schema": {
                    "type": "object", "required": ["name", "partitions"], "additionalProperties": false,
                    "properties": {
                        "name": name_schema.clone(),
                        "partitions": { "type": "integer", "minimum": 1, "maximum": crate::topology::MAX_PARTITIONS },
                    },
                } },
            }),
        ),
    ];
    let Some(paths) = doc["paths"].as_object_mut() else { return doc };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else { continue };
        for (method, op) in item.iter_mut() {
            let operation = matches!(method.as_str(), "get" | "put" | "post" | "delete" | "patch" | "head" | "options");
            if !operation || !op.is_object() {
                continue;
            }
            let mutating = matches!(method.as_str(), "post" | "put" | "delete" | "patch");
            let open = path == "/healthz" || path == "/readyz";
            let needs_token = !open && if mutating { token } else { token_reads };
            op["security"] = if needs_token { json!([{ "bearer": [] }]) } else { json!([{}]) };
            if let Some((_, _, content)) = body_types.iter().find(|(p, m, _)| p == path && m == method) {
                op["requestBody"]["content"] = content.clone();
                op["requestBody"]["required"] = json!(true);
            }
            if let Some(params) = op.get_mut("parameters").and_then(|p| p.as_array_mut()) {
                for param in params {
                    let named = param["in"] == "path" && param["name"] != "key";
                    if named {
                        param["schema"] = name_schema.clone();
                    }
                    // Integers as the handlers parse them (u32, usize, i64):
                    // bounds the document states and the server accepts.
                    let schema = &mut param["schema"];
                    let integer = schema["type"] == "integer"
                        || schema["type"].as_array().is_some_and(|t| t.iter().any(|t| t == "integer"));
                    if integer && schema.get("maximum").is_none() {
                        let unsigned = schema["minimum"] == 0;
                        let int32 = schema["format"] == "int32";
                        schema["maximum"] = match (int32, unsigned) {
                            (true, true) => json!(u32::MAX),
                            (true, false) => json!(i32::MAX),
                            (false, true) => json!(u64::MAX),
                            (false, false) => json!(i64::MAX),
                        };
                        if !unsigned {
                            schema["minimum"] = if int32 { json!(i32::MIN) } else { json!(i64::MIN) };
                        }
                    }
                }
            }
            let has_body = op.get("requestBody").is_some();
            let Some(responses) = op["responses"].as_object_mut() else { continue };
            if path.starts_with("/v1/") && path != "/v1/openapi.json" {
                let mut shared = vec![("400", "bad request: a bad name, query string or body")];
                if needs_token {
                    shared.push(("401", "a bearer token is needed"));
                    shared.push(("403", "the bearer token is not the one this weir accepts"));
                }
                if has_body {
                    shared.push(("408", "the request body stopped arriving"));
                    shared.push(("413", "the request body is too large"));
                }
                for (code, description) in shared {
                    responses.entry(code.to_owned()).or_insert_with(|| json!({ "description": description }));
                }
            }
            for (code, response) in responses.iter_mut() {
                if code == "204" {
                    continue;
                }
                let error = code.starts_with('4') || code.starts_with('5');
                let has_content = response["content"].as_object().is_some_and(|c| !c.is_empty());
                if error {
                    response["content"] = json!({ "application/json": { "schema": error_ref.clone() } });
                } else if !has_content {
                    let text = path == "/metrics" || path == "/healthz" || path == "/readyz";
                    response["content"] = if text {
                        json!({ "text/plain": { "schema": { "type": "string" } } })
                    } else {
                        json!({ "application/json": { "schema": { "type": "object" } } })
                    };
                }
            }
        }
    }
    doc
}

/// Bearer-token check: mutating routes always (when a token is configured),
/// reads when `api_token_reads` is set. Health, readiness and the console's
/// files stay open (the console asks for the token and sends it itself).
async fn authorize(State(node): State<Arc<Node>>, request: Request, next: Next) -> Response {
    let Some(token) = node.config.api_token.as_deref() else { return next.run(request).await };
    let path = request.uri().path();
    let mutating = !matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let open = path == "/healthz" || path == "/readyz" || console::is_console_path(path);
    if open || (!mutating && !node.config.api_token_reads) {
        return next.run(request).await;
    }
    let given = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(bearer_token);
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

/// The token of an `Authorization: Bearer <token>` value; the scheme is
/// case-insensitive (RFC 6750 via RFC 7235), spaces around the token are not
/// part of it.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim()).filter(|t| !t.is_empty())
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
        .merge(console::routes())
        .fallback(|| async { ApiError::not_found("not-found", "no such route (the API lives under /v1)") })
        .method_not_allowed_fallback(|method: Method, uri: axum::http::Uri| async move {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                format!("{} does not take {method} (see /v1/openapi.json)", uri.path()),
            )
        })
        .layer(axum::middleware::from_fn_with_state((upload_limit, node.config.body_timeout), read_body))
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

/// Reads a request's body before the handler sees it, waiting at most
/// `timeout` for each next chunk: a client that stops sending gets `408`
/// instead of holding a connection and a buffer forever. Only authorised
/// requests get here; the declared size was checked before.
async fn read_body(
    State((limit, timeout)): State<(usize, std::time::Duration)>,
    request: Request,
    next: Next,
) -> Response {
    use futures::StreamExt;
    if matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS | Method::DELETE) {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let mut stream = body.into_data_stream();
    let mut buffer = Vec::new();
    loop {
        match tokio::time::timeout(timeout, stream.next()).await {
            Err(_) => {
                return ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body-timeout",
                    format!("no bytes of the request body for {timeout:?} (WEIR_BODY_TIMEOUT)"),
                )
                .into_response();
            }
            Ok(None) => break,
            Ok(Some(Ok(chunk))) => {
                if buffer.len() + chunk.len() > limit {
                    return ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "too-large",
                        format!("request body too large: the limit is {limit} bytes (WEIR_MAX_UPLOAD)"),
                    )
                    .into_response();
                }
                buffer.extend_from_slice(&chunk);
            }
            Ok(Some(Err(e))) => {
                return ApiError::bad_request("bad-body", format!("reading the body: {e}")).into_response();
            }
        }
    }
    next.run(Request::from_parts(parts, axum::body::Body::from(buffer))).await
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for value in ["Bearer t0k", "bearer t0k", "BEARER t0k", "bEaReR  t0k "] {
            assert_eq!(bearer_token(value), Some("t0k"), "{value}");
        }
        for value in ["Basic t0k", "Bearer", "Bearer ", "t0k", "Bearert0k"] {
            assert_eq!(bearer_token(value), None, "{value}");
        }
    }
}
