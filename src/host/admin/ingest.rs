//! HTTP ingest: `POST /ingest/{stream}` appends the request's entries to a stream, for
//! producers that cannot speak Redis (webhooks, shell scripts, browsers behind a proxy).
//!
//! - Body: a JSON object (one entry, a field per key), a JSON array of objects (one entry
//!   each, all appended or none), or a form (`application/x-www-form-urlencoded`, one entry).
//!   JSON strings are stored as they are, other values as their JSON text.
//! - Who may write where: each `[[ingest]]` table is an allow-list of streams (keys, prefixes
//!   ending in `*`, partitioned streams) with a bearer token of its own. sluice's own keys
//!   (under `prefix:`) are never written.
//! - Partitioned streams (`orders:{0..15}`): `?key=K` picks the partition, as `sluice publish
//!   --key` does (the key's Redis Cluster slot modulo the number of partitions).
//! - Answers: 200 `{"stream": KEY, "ids": [...]}`; 400 a body that is no entry; 401 no or a
//!   wrong token; 403 a stream the token does not cover, or sluice's own; 404 no `[[ingest]]`
//!   configured; 409 the key is not a stream; 413 a body over `max_bytes`; 415 another
//!   content type; 503 Redis is away (nothing was written). Errors are `{"error": "…"}`.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

use super::Admin;
use super::api::{ApiError, bearer_matches};
use crate::config::IngestConfig;
use crate::model::Partitions;
use crate::model::spec::name_matches;
use crate::store::ingest::{AppendError, append};

/// The most entries one request may carry (bounding the time of its one script call).
pub const MAX_ENTRIES: usize = 10_000;
/// The most fields one entry may have.
pub const MAX_FIELDS: usize = 1_000;
/// How long Redis may take to append a request's entries (a request made while Redis is
/// away waits for it this long, then answers 503).
const APPEND_TIMEOUT: Duration = Duration::from_secs(5);

/// One `[[ingest]]` table, its token read.
#[derive(Debug)]
pub struct Allow {
    streams: Vec<String>,
    token: String,
    max_bytes: usize,
}

/// Every `[[ingest]]` table of the config, tokens read; empty: HTTP ingest is off.
pub fn allow_lists(config: &[IngestConfig]) -> anyhow::Result<Arc<[Allow]>> {
    config
        .iter()
        .map(|c| {
            Ok(Allow {
                streams: c.streams.clone(),
                token: c.token()?,
                max_bytes: c.max_bytes,
            })
        })
        .collect()
}

/// `?key=K`: the routing key that picks one of partitioned streams.
#[derive(Deserialize)]
pub struct Routing {
    key: Option<String>,
}

#[derive(serde::Serialize)]
struct Appended {
    stream: String,
    ids: Vec<String>,
}

/// `POST /ingest/{stream}`.
pub async fn ingest(
    State(admin): State<Admin>,
    Path(stream): Path<String>,
    Query(routing): Query<Routing>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let mut matched = "-".to_string();
    let result = async {
        let (allow, target) = authorize(&admin, &parts.headers, &stream, routing.key)?;
        matched = allow.pattern.to_string();
        let body = read_body(&parts.headers, body, allow.max_bytes).await?;
        let entries = entries(&parts.headers, &body)?;
        let (mut conn, _) = admin.redis()?;
        let ids = tokio::time::timeout(APPEND_TIMEOUT, append(&mut conn, &target, &entries))
            .await
            .map_err(|_| {
                ApiError(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "redis did not answer in time; the entries may or may not have been appended"
                        .into(),
                )
            })?
            .map_err(|e| match e {
                AppendError::NotAStream(kind) => ApiError(
                    StatusCode::CONFLICT,
                    format!("{target:?} holds a {kind}, not a stream: nothing was appended"),
                ),
                AppendError::Store(e) => e.into(),
            })?;
        Ok::<_, ApiError>(Appended {
            stream: target,
            ids,
        })
    }
    .await;
    match result {
        Ok(appended) => {
            crate::metrics::ingested(&matched, "ok", appended.ids.len() as u64);
            tracing::debug!(stream = %appended.stream, entries = appended.ids.len(), "ingested");
            Json(appended).into_response()
        }
        Err(e) => {
            crate::metrics::ingested(&matched, status_label(e.0), 0);
            e.into_response()
        }
    }
}

/// The metric label of an answer.
fn status_label(code: StatusCode) -> &'static str {
    match code {
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN | StatusCode::NOT_FOUND => "forbidden",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        _ => "bad_request",
    }
}

/// What a request may do: the pattern that lets it write (the first of its token's lists
/// that covers the stream), the body limit, and the key to append to.
struct Permit<'a> {
    pattern: &'a str,
    max_bytes: usize,
}

/// Check the token and the stream: the permit and the key the entries go to.
fn authorize<'a>(
    admin: &'a Admin,
    headers: &HeaderMap,
    stream: &str,
    key: Option<String>,
) -> Result<(Permit<'a>, String), ApiError> {
    if admin.ingest.is_empty() {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            "HTTP ingest is off: no [[ingest]] is configured".into(),
        ));
    }
    let lists: Vec<&Allow> = admin
        .ingest
        .iter()
        .filter(|a| bearer_matches(headers, &a.token))
        .collect();
    if lists.is_empty() {
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "a valid `Authorization: Bearer <token>` header is needed".into(),
        ));
    }
    let bad = |m: String| ApiError(StatusCode::BAD_REQUEST, m);
    let target = match (Partitions::parse(stream), key) {
        (Some(Err(m)), _) => return Err(bad(format!("{stream:?}: {m}"))),
        (Some(Ok(p)), Some(key)) => p.of_key(&key),
        (Some(Ok(_)), None) => {
            return Err(bad(format!(
                "{stream:?} names partitioned streams: `?key=K` picks the partition"
            )));
        }
        (None, Some(_)) => {
            return Err(bad(format!(
                "`?key=` picks a partition, and {stream:?} names no partitions \
                 (like `orders:{{0..15}}`)"
            )));
        }
        (None, None) => stream.to_string(),
    };
    if target.is_empty() {
        return Err(bad("the stream key is empty".into()));
    }
    let forbidden = |m: String| ApiError(StatusCode::FORBIDDEN, m);
    let own = format!("{}:", admin.prefix);
    if target.starts_with(&own) {
        return Err(forbidden(format!(
            "{target:?} is one of sluice's own keys (under `{own}`)"
        )));
    }
    let permit = lists
        .iter()
        .flat_map(|a| a.streams.iter().map(move |p| (a, p)))
        .find(|(_, pattern)| covers(pattern, stream, &target))
        .map(|(a, pattern)| Permit {
            pattern,
            max_bytes: a.max_bytes,
        })
        .ok_or_else(|| {
            forbidden(format!(
                "this token may not append to {stream:?} (see [[ingest]] streams)"
            ))
        })?;
    Ok((permit, target))
}

/// Does `[[ingest]]` pattern `pattern` let a request for `stream` append to `target`? The
/// name as asked matches it (exactly, or by prefix), or the target is one of the
/// partitioned streams it names.
fn covers(pattern: &str, stream: &str, target: &str) -> bool {
    name_matches(pattern, stream)
        || Partitions::parse(pattern)
            .and_then(Result::ok)
            .is_some_and(|p| p.numbers().any(|i| p.key(i) == target))
}

/// The body, at most `max_bytes` of it (413 past that, before reading it when the request
/// says its length).
async fn read_body(
    headers: &HeaderMap,
    body: axum::body::Body,
    max_bytes: usize,
) -> Result<axum::body::Bytes, ApiError> {
    let too_large = || {
        ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is over this stream's limit of {max_bytes} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_bytes as u64) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, max_bytes).await.map_err(|e| {
        let over = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if over {
            too_large()
        } else {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("reading the body failed: {e}"),
            )
        }
    })
}

/// The entries a body holds, by its content type.
fn entries(headers: &HeaderMap, body: &[u8]) -> Result<Vec<Vec<(String, String)>>, ApiError> {
    let bad = |m: String| ApiError(StatusCode::BAD_REQUEST, m);
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|v| {
            v.to_str()
                .unwrap_or_default()
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let entries = match content_type.as_str() {
        "application/x-www-form-urlencoded" => {
            vec![form_urlencoded::parse(body).into_owned().collect()]
        }
        t if t.is_empty() || t == "application/json" || t.ends_with("+json") => {
            serde_json::from_slice::<Entries>(body)
                .map_err(|e| bad(format!("not a JSON object or array of objects: {e}")))?
                .0
        }
        t => {
            return Err(ApiError(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "content type {t:?}: send application/json or \
                     application/x-www-form-urlencoded"
                ),
            ));
        }
    };
    if entries.is_empty() {
        return Err(bad(
            "no entries: send an object, or a non-empty array".into()
        ));
    }
    if entries.len() > MAX_ENTRIES {
        return Err(bad(format!(
            "{} entries: at most {MAX_ENTRIES} per request",
            entries.len()
        )));
    }
    for (i, fields) in entries.iter().enumerate() {
        if fields.is_empty() || fields.len() > MAX_FIELDS {
            return Err(bad(format!(
                "entry {i} has {} fields: a stream entry has 1 to {MAX_FIELDS}",
                fields.len()
            )));
        }
    }
    Ok(entries)
}

/// A JSON body's entries: an object is one, an array of objects many; each object's fields
/// in the order they came.
struct Entries(Vec<Vec<(String, String)>>);

/// One JSON object's fields, in order.
struct Fields(Vec<(String, String)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object or an array of objects")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Entries, A::Error> {
                Ok(Entries(vec![FieldsVisitor.visit_map(map)?.0]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Entries, A::Error> {
                let mut all = Vec::new();
                while let Some(Fields(fields)) = seq.next_element()? {
                    if all.len() == MAX_ENTRIES {
                        return Err(de::Error::custom(format!(
                            "more than {MAX_ENTRIES} entries in one request"
                        )));
                    }
                    all.push(fields);
                }
                Ok(Entries(all))
            }
        }
        d.deserialize_any(V)
    }
}

struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Fields;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an object (one entry, a field per key)")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
        let mut fields = Vec::new();
        while let Some((name, value)) = map.next_entry::<String, serde_json::Value>()? {
            let value = match value {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            fields.push((name, value));
        }
        Ok(Fields(fields))
    }
}

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(FieldsVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(body: &str) -> Result<Vec<Vec<(String, String)>>, ApiError> {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        entries(&headers, body.as_bytes())
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn an_object_is_one_entry_in_field_order_and_other_values_are_json_text() {
        let e = json(r#"{"z": "1", "a": 2, "m": {"x": [true, null]}}"#).unwrap();
        assert_eq!(
            e,
            vec![pairs(&[
                ("z", "1"),
                ("a", "2"),
                ("m", r#"{"x":[true,null]}"#)
            ])]
        );
    }

    #[test]
    fn an_array_is_many_entries_and_anything_else_is_refused() {
        let e = json(r#"[{"a": "1"}, {"b": "2", "c": "3"}]"#).unwrap();
        assert_eq!(
            e,
            vec![pairs(&[("a", "1")]), pairs(&[("b", "2"), ("c", "3")])]
        );
        for bad in [
            "[]",
            "{}",
            "[{}]",
            "[1]",
            "\"x\"",
            "3",
            "[{\"a\": 1}, 2]",
            "{",
            "",
        ] {
            let e = json(bad).unwrap_err();
            assert_eq!(e.0, StatusCode::BAD_REQUEST, "{bad}: {}", e.1);
        }
    }

    #[test]
    fn a_form_is_one_entry_and_other_content_types_are_refused() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            "application/x-www-form-urlencoded; charset=utf-8"
                .parse()
                .unwrap(),
        );
        let e = entries(&headers, b"a=1&b=two+words&a=%C3%A9").unwrap();
        assert_eq!(
            e,
            vec![pairs(&[("a", "1"), ("b", "two words"), ("a", "é")])]
        );
        headers.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        assert_eq!(
            entries(&headers, b"a").unwrap_err().0,
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
    }

    #[test]
    fn a_pattern_covers_its_names_prefixes_and_partitions() {
        assert!(covers("orders", "orders", "orders"));
        assert!(!covers("orders", "orders2", "orders2"));
        assert!(covers("hooks:*", "hooks:gh", "hooks:gh"));
        assert!(covers("orders:{0..3}", "orders:{0..3}", "orders:{2}"));
        assert!(covers("orders:{0..3}", "orders:{2}", "orders:{2}"));
        assert!(!covers("orders:{0..3}", "orders:{7}", "orders:{7}"));
        assert!(!covers("orders:{0..3}", "orders:{0..7}", "orders:{5}"));
    }
}
