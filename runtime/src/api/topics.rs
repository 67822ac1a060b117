//! `/v1/topics`: list and create topics; produce records to a topic and
//! read them back. On the embedded backend these are its own topics; on
//! Kafka the same calls go to the cluster (reads: committed records only).

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use super::extract::{ApiQuery, NamePath, check_name};
use super::{ApiError, ApiResult, blocking, body_error};
use crate::backend::embedded::BackendError;
use crate::backend::kafka;
use crate::jsonl::{InputLine, OutputLine, parse_input_line_at};
use crate::node::Node;
use crate::partitioner::partition_for;
use crate::topology::MAX_PARTITIONS;

pub fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/v1/topics", get(list).post(create))
        .route("/v1/topics/{topic}/records", post(produce).get(read))
}

/// The Kafka cluster failed or could not be reached.
fn broker_error(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_GATEWAY, "broker-failure", message)
}

fn unknown_topic(topic: &str) -> ApiError {
    ApiError::not_found(
        "unknown-topic",
        format!(
            "topic `{topic}` does not exist; deploying an application creates its topics, or POST /v1/topics {{\"name\", \"partitions\"}}"
        ),
    )
}

/// Topics of the embedded backend with partition counts and end offsets.
#[utoipa::path(get, path = "/v1/topics", tag = "topics", responses((status = 200, description = "topics")))]
pub async fn list(State(node): State<Arc<Node>>) -> ApiResult<impl IntoResponse> {
    blocking(move || {
        if node.on_kafka() {
            let counts = kafka::partition_counts(&node.config.brokers).map_err(broker_error)?;
            let topics: Vec<_> =
                counts.iter().map(|(name, partitions)| json!({ "name": name, "partitions": partitions })).collect();
            return Ok(Json(json!({ "topics": topics })));
        }
        let topics: Vec<_> = node
            .backend
            .topics()
            .iter()
            .map(|t| {
                let ends: Vec<i64> = (0..t.partitions()).map(|p| t.end_offset(p)).collect();
                json!({ "name": &*t.name, "partitions": t.partitions(), "end_offsets": ends })
            })
            .collect();
        Ok(Json(json!({ "topics": topics })))
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTopic {
    name: String,
    partitions: u32,
}

/// Create a topic: `{"name", "partitions"}`.
#[utoipa::path(post, path = "/v1/topics", tag = "topics", request_body(content = String, content_type = "application/json"),
    responses((status = 201, description = "created"), (status = 400, description = "bad request"), (status = 409, description = "exists with another partition count")))]
pub async fn create(
    State(node): State<Arc<Node>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<impl IntoResponse> {
    let body = body.map_err(body_error)?;
    let t: NewTopic = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("bad-request", format!("expected {{\"name\", \"partitions\"}}: {e}")))?;
    check_name("topic", &t.name)?;
    if t.partitions == 0 || t.partitions > MAX_PARTITIONS {
        return Err(ApiError::bad_request(
            "bad-request",
            format!("a topic has 1 to {MAX_PARTITIONS} partitions, not {}", t.partitions),
        ));
    }
    if node.on_kafka() {
        return blocking(move || {
            let brokers = &node.config.brokers;
            let existing = kafka::partition_counts(brokers).map_err(broker_error)?;
            if let Some(found) = existing.get(&t.name).filter(|found| **found != t.partitions) {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "topic-exists",
                    format!("topic `{}` exists with {found} partition(s), not {}", t.name, t.partitions),
                ));
            }
            let request = kafka::TopicRequest {
                name: t.name.clone(),
                partitions: t.partitions,
                compact: false,
                retention_ms: None,
            };
            kafka::create_topics(brokers, &[request]).map_err(broker_error)?;
            Ok((StatusCode::CREATED, Json(json!({ "name": t.name, "partitions": t.partitions }))))
        })
        .await;
    }
    blocking(move || match node.backend.create_topic(&t.name, t.partitions) {
        Ok(topic) => Ok((StatusCode::CREATED, Json(json!({ "name": &*topic.name, "partitions": topic.partitions() })))),
        Err(e @ BackendError::PartitionMismatch { .. }) => {
            Err(ApiError::new(StatusCode::CONFLICT, "topic-exists", e.to_string()))
        }
        Err(e @ BackendError::BadTopic(_)) => Err(ApiError::bad_request("bad-request", e.to_string())),
        Err(e) => Err(ApiError::internal(e.to_string())),
    })
    .await
}

/// Body: JSONL in `weir test`'s input format; `topic` may be omitted.
/// Produce records: JSONL in `weir test`'s input format (`topic` may be
/// omitted). All lines or none: one atomic append.
#[utoipa::path(post, path = "/v1/topics/{topic}/records", tag = "topics", params(("topic" = String, Path, description = "topic"),
        ("Idempotency-Key" = Option<String>, Header, description = "stores the batch once per key (per topic); a resend answers as the first did, with `Idempotent-Replayed: true`; other records under a used key: 422")),
    request_body(content = String, content_type = "application/x-ndjson"),
    responses((status = 200, description = "partition and offset of each record"), (status = 400, description = "a bad line, named"),
        (status = 422, description = "the idempotency key was used for other records"),
        (status = 404, description = "unknown topic"), (status = 503, description = "storage failure (e.g. disk full)")))]
pub async fn produce(
    State(node): State<Arc<Node>>,
    NamePath(topic): NamePath<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let idempotency_key = idempotency_key(&headers)?;
    let body = body.map_err(body_error)?;
    let text = String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::bad_request("bad-records", "the body is not UTF-8 JSONL"))?;
    if node.on_kafka() {
        if idempotency_key.is_some() {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-unsupported",
                "Idempotency-Key is honoured on the embedded backend only; on Kafka, produce with an idempotent producer",
            ));
        }
        return blocking(move || {
            let records =
                kafka::parse_jsonl(&topic, text.as_bytes()).map_err(|e| ApiError::bad_request("bad-records", e))?;
            let written = kafka::produce(&node.config.brokers, &topic, records).map_err(|e| match e {
                kafka::ProduceError::Refused(m) if m.contains("does not exist on") => unknown_topic(&topic),
                kafka::ProduceError::Refused(m) => ApiError::bad_request("bad-records", m),
                kafka::ProduceError::Broker(m) => broker_error(m),
            })?;
            let written: Vec<_> = written.iter().map(|(p, o)| json!({ "partition": p, "offset": o })).collect();
            Ok(Json(json!({ "records": written })).into_response())
        })
        .await;
    }
    blocking(move || {
        let t = node.backend.topic(&topic).ok_or_else(|| unknown_topic(&topic))?;
        let mut records = Vec::new();
        let now_ms = crate::backend::embedded::now_us() / 1000;
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let with_topic = inject_topic(line, &topic);
            let parsed = parse_input_line_at(&with_topic, now_ms)
                .map_err(|e| ApiError::bad_request("bad-records", format!("line {}: {e}", i + 1)))?;
            let InputLine::Record { topic: named, partition, record } = parsed else {
                return Err(ApiError::bad_request(
                    "bad-records",
                    format!("line {}: wall_clock lines are for weir test only", i + 1),
                ));
            };
            if named != topic {
                return Err(ApiError::bad_request(
                    "bad-records",
                    format!("line {}: topic `{named}` but the URL names `{topic}`", i + 1),
                ));
            }
            if let Some(p) = partition
                && p >= t.partitions()
            {
                return Err(ApiError::bad_request(
                    "bad-records",
                    format!("line {}: partition {p} does not exist (topic `{topic}` has {})", i + 1, t.partitions()),
                ));
            }
            let partition = partition.unwrap_or_else(|| partition_for(record.key.as_deref(), t.partitions(), 0));
            records.push((t.clone(), partition, record));
        }
        let storage = |e: BackendError| match e {
            BackendError::Storage(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "storage-failure", e.to_string())
            }
            e @ BackendError::IdempotencyConflict { .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "idempotency-key-reused", e.to_string())
            }
            e => ApiError::internal(e.to_string()),
        };
        // All lines or none: one atomic append (once per idempotency key).
        let (written, replayed) = match &idempotency_key {
            Some(key) => {
                let fingerprint = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(text.as_bytes()));
                node.backend.append_once(&t, key, &fingerprint, records).map_err(storage)?
            }
            None => {
                let partitions: Vec<u32> = records.iter().map(|(_, p, _)| *p).collect();
                let offsets = node.backend.append(records).map_err(storage)?;
                (partitions.into_iter().zip(offsets).collect(), false)
            }
        };
        let written: Vec<_> = written.iter().map(|(p, o)| json!({ "partition": p, "offset": o })).collect();
        let mut response = Json(json!({ "records": written })).into_response();
        if replayed {
            response.headers_mut().insert("idempotent-replayed", axum::http::HeaderValue::from_static("true"));
        }
        Ok(response)
    })
    .await
}

/// The `Idempotency-Key` header of a produce request, if any: 1-200
/// visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    let key =
        value.to_str().ok().filter(|k| !k.is_empty() && k.len() <= 200 && k.bytes().all(|b| b.is_ascii_graphic()));
    match key {
        Some(k) => Ok(Some(k.to_owned())),
        None => Err(ApiError::bad_request(
            "bad-idempotency-key",
            "Idempotency-Key is 1-200 visible ASCII characters (e.g. a UUID)",
        )),
    }
}

/// Adds `"topic"` to a line that has none, so one parser serves both formats.
fn inject_topic(line: &str, topic: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(line) {
        Ok(serde_json::Value::Object(mut map)) if !map.contains_key("topic") => {
            map.insert("topic".into(), json!(topic));
            serde_json::Value::Object(map).to_string()
        }
        _ => line.to_owned(),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ReadQuery {
    /// Offset to start from, in every partition read (default 0).
    from: Option<i64>,
    /// Instead of `from`: the last this many offsets of every partition read
    /// (the latest records; on Kafka transaction markers count too).
    last: Option<u32>,
    /// Most records returned (default 1000).
    limit: Option<usize>,
    /// One partition only.
    partition: Option<u32>,
}

/// Read records from an offset, or the last `last` (in each partition read), at most `limit`.
#[utoipa::path(get, path = "/v1/topics/{topic}/records", tag = "topics", params(("topic" = String, Path, description = "topic"), ReadQuery),
    responses((status = 200, description = "records with offsets"), (status = 404, description = "unknown topic or partition")))]
pub async fn read(
    State(node): State<Arc<Node>>,
    NamePath(topic): NamePath<String>,
    ApiQuery(q): ApiQuery<ReadQuery>,
) -> ApiResult<impl IntoResponse> {
    if node.on_kafka() {
        return blocking(move || {
            let counts = kafka::partition_counts(&node.config.brokers).map_err(broker_error)?;
            let partitions = *counts.get(&topic).ok_or_else(|| unknown_topic(&topic))?;
            if let Some(p) = q.partition.filter(|p| *p >= partitions) {
                return Err(ApiError::not_found(
                    "unknown-partition",
                    format!("partition {p} does not exist (topic `{topic}` has {partitions})"),
                ));
            }
            let read = kafka::ReadOptions {
                from: q.from.unwrap_or(0).max(0),
                last: q.last.map(i64::from),
                limit: Some(q.limit.unwrap_or(1000).min(100_000)),
                partition: q.partition,
                uncommitted: false,
                offsets: true,
            };
            let mut out = Vec::new();
            kafka::consume(&node.config.brokers, &topic, &read, &mut out)
                .map_err(|e| broker_error(format!("{e:#}")))?;
            let records: Vec<serde_json::Value> =
                String::from_utf8_lossy(&out).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
            Ok(Json(json!({ "records": records })))
        })
        .await;
    }
    blocking(move || {
        let t = node.backend.topic(&topic).ok_or_else(|| unknown_topic(&topic))?;
        let partitions: Vec<u32> = match q.partition {
            Some(p) if p < t.partitions() => vec![p],
            Some(p) => {
                return Err(ApiError::not_found(
                    "unknown-partition",
                    format!("partition {p} does not exist (topic `{topic}` has {})", t.partitions()),
                ));
            }
            None => (0..t.partitions()).collect(),
        };
        let limit = q.limit.unwrap_or(1000).min(100_000);
        let from = q.from.unwrap_or(0).max(0);
        let mut records = Vec::new();
        for p in partitions {
            let room = limit.saturating_sub(records.len());
            let from = q.last.map_or(from, |n| (t.end_offset(p) - i64::from(n)).max(0));
            for r in node.backend.read(&t, p, from, room).map_err(|e| ApiError::internal(e.to_string()))? {
                let line = OutputLine::new(&r.topic, r.partition, &r.record);
                let mut v = serde_json::to_value(line).expect("json");
                v["offset"] = json!(r.offset);
                records.push(v);
            }
        }
        Ok(Json(json!({ "records": records })))
    })
    .await
}
