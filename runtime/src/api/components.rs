//! `/v1/components`: upload (raw body or multipart; validated and
//! precompiled at upload; named and versioned, or content-addressed only),
//! list, describe, delete (refused while an application uses it).

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::{ApiQuery, NamePath, check_name};
use super::{ApiError, ApiResult, blocking, body_error};
use crate::node::Node;
use crate::registry::RegistryError;
use crate::wasm::{LoadError, LoadedComponent};

pub fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/v1/components", get(list).post(upload))
        .route("/v1/components/{name}", get(describe_name))
        .route("/v1/components/{name}/{version}", get(describe_version).delete(remove))
}

#[derive(Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    /// Name to record the component under (optional).
    name: Option<String>,
    /// Version (default: the next number).
    version: Option<String>,
}

fn registry_error(e: RegistryError) -> ApiError {
    match e {
        RegistryError::Load { error: LoadError::Internal(m), .. } => ApiError::internal(m),
        RegistryError::Load { error, .. } => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "bad-component", error.to_string())
        }
        e @ RegistryError::VersionExists { .. } => ApiError::new(StatusCode::CONFLICT, "version-exists", e.to_string()),
        e @ RegistryError::BadName(_) => ApiError::bad_request("bad-name", e.to_string()),
        e @ RegistryError::Io(_) => ApiError::internal(e.to_string()),
        e => ApiError::bad_request("bad-reference", e.to_string()),
    }
}

fn describe(node: &Node, c: &LoadedComponent) -> Value {
    json!({
        "sha256": c.sha256(),
        "reference": format!("sha256:{}", c.sha256()),
        "world": format!("{} processor", c.contract()),
        "size": c.size(),
        "exports": c.exports(),
        "imports": c.imports(),
        "used_by": node.used_by(c.sha256()),
    })
}

/// Upload a component: the raw `.wasm` as the body (`?name=&version=`), or
/// multipart with a `file` part and optional `name` and `version` parts.
#[utoipa::path(post, path = "/v1/components", tag = "components", params(UploadQuery),
    request_body(content = Vec<u8>, content_type = "application/wasm"),
    responses((status = 201, description = "validated and precompiled"), (status = 409, description = "that version exists with other content"),
        (status = 413, description = "body too large"), (status = 422, description = "not a component of the weir world")))]
pub async fn upload(
    State(node): State<Arc<Node>>,
    query: ApiQuery<UploadQuery>,
    request: Request,
) -> ApiResult<impl IntoResponse> {
    let ApiQuery(mut q) = query;
    let multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let bytes = if multipart {
        let mut form = Multipart::from_request(request, &())
            .await
            .map_err(|e| ApiError::bad_request("bad-body", e.to_string()))?;
        let mut file = None;
        while let Some(field) = form.next_field().await.map_err(|e| ApiError::bad_request("bad-body", e.to_string()))? {
            let part = field.name().unwrap_or_default().to_owned();
            let data = field.bytes().await.map_err(|e| ApiError::new(e.status(), "bad-body", e.body_text()))?;
            match part.as_str() {
                "file" => file = Some(data),
                "name" => q.name = Some(String::from_utf8_lossy(&data).into_owned()),
                "version" => q.version = Some(String::from_utf8_lossy(&data).into_owned()),
                other => {
                    return Err(ApiError::bad_request(
                        "bad-body",
                        format!("unexpected form part `{other}` (file, name, version)"),
                    ));
                }
            }
        }
        file.ok_or_else(|| ApiError::bad_request("bad-body", "the form has no `file` part"))?
    } else {
        Bytes::from_request(request, &()).await.map_err(body_error)?
    };
    if q.version.is_some() && q.name.is_none() {
        return Err(ApiError::bad_request("bad-name", "a version needs a name"));
    }
    if let Some(name) = &q.name {
        check_name("component name", name)?;
    }
    if let Some(version) = &q.version {
        check_name("component version", version)?;
    }
    blocking(move || {
        if let (Some(cluster), Some(name)) = (node.cluster(), &q.name) {
            // Versions are numbered across the cluster: this instance first
            // learns the versions pushed to the others under the name.
            cluster
                .learn_versions(&node, name)
                .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "cluster-unavailable", e))?;
        }
        let (loaded, entry) = match &q.name {
            Some(name) => {
                let (c, e) = node.registry.add_named(&bytes, name, q.version.as_deref()).map_err(registry_error)?;
                (c, Some(e))
            }
            None => (
                node.registry
                    .add(&bytes)
                    .map_err(|error| registry_error(RegistryError::Load { sha256: String::new(), error }))?,
                None,
            ),
        };
        if let Some(cluster) = node.cluster() {
            // One upload for the whole cluster: every instance can fetch it.
            let version = entry.as_ref().map(|e| e.version.as_str());
            cluster
                .catalog
                .put_component(&bytes, q.name.as_deref(), version)
                .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "cluster-unavailable", e.to_string()))?;
        }
        let mut body = describe(&node, &loaded);
        if let (Some(name), Some(entry)) = (&q.name, entry) {
            body["name"] = json!(name);
            body["version"] = json!(entry.version);
            body["reference"] = json!(format!("{name}@{}", entry.version));
        }
        Ok((StatusCode::CREATED, Json(body)))
    })
    .await
}

/// Every named component with its versions, and the unnamed ones.
#[utoipa::path(get, path = "/v1/components", tag = "components", responses((status = 200, description = "components")))]
pub async fn list(State(node): State<Arc<Node>>) -> ApiResult<impl IntoResponse> {
    blocking(move || {
        let names = node.registry.names();
        let named: Vec<String> = names.values().flatten().map(|v| v.sha256.clone()).collect();
        let unnamed: Vec<String> = node.registry.list().into_iter().filter(|s| !named.contains(s)).collect();
        Ok(Json(json!({ "components": names, "unnamed": unnamed })))
    })
    .await
}

/// Every version of a named component.
#[utoipa::path(get, path = "/v1/components/{name}", tag = "components", params(("name" = String, Path, description = "component name")),
    responses((status = 200, description = "versions"), (status = 404, description = "unknown component")))]
pub async fn describe_name(
    State(node): State<Arc<Node>>,
    NamePath(name): NamePath<String>,
) -> ApiResult<impl IntoResponse> {
    blocking(move || {
        let versions = node.registry.versions(&name);
        if versions.is_empty() {
            return Err(ApiError::not_found("unknown-component", format!("no component named `{name}`")));
        }
        let mut out = Vec::new();
        for v in versions {
            let c = node.registry.resolve(&format!("sha256:{}", v.sha256)).map_err(registry_error)?;
            let mut d = describe(&node, &c);
            d["version"] = json!(v.version);
            d["uploaded_ms"] = json!(v.uploaded_ms);
            out.push(d);
        }
        Ok(Json(json!({ "name": name, "versions": out })))
    })
    .await
}

/// One version: world, exports, imports, size, sha256, which applications use it.
#[utoipa::path(get, path = "/v1/components/{name}/{version}", tag = "components",
    params(("name" = String, Path, description = "component name"), ("version" = String, Path, description = "version")),
    responses((status = 200, description = "the component"), (status = 404, description = "unknown component or version")))]
pub async fn describe_version(
    State(node): State<Arc<Node>>,
    NamePath((name, version)): NamePath<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    blocking(move || {
        let c = node
            .registry
            .resolve(&format!("{name}@{version}"))
            .map_err(|_| ApiError::not_found("unknown-component", format!("no component `{name}@{version}`")))?;
        let mut d = describe(&node, &c);
        d["name"] = json!(name);
        d["version"] = json!(version);
        Ok(Json(d))
    })
    .await
}

/// Delete a version; refused while an application runs it.
#[utoipa::path(delete, path = "/v1/components/{name}/{version}", tag = "components",
    params(("name" = String, Path, description = "component name"), ("version" = String, Path, description = "version")),
    responses((status = 204, description = "deleted"), (status = 404, description = "unknown"), (status = 409, description = "in use")))]
pub async fn remove(
    State(node): State<Arc<Node>>,
    NamePath((name, version)): NamePath<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    blocking(move || {
        let Some(entry) = node.registry.versions(&name).into_iter().find(|v| v.version == version) else {
            return Err(ApiError::not_found("unknown-component", format!("no component `{name}@{version}`")));
        };
        let users = node.used_by(&entry.sha256);
        if !users.is_empty() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "component-in-use",
                format!("{name}@{version} is used by {}; update or delete those applications first", users.join(", ")),
            ));
        }
        node.registry.remove(&name, &version).map_err(registry_error)?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}
