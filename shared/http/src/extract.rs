//! What routes take from a request, each checked once with the API's error shape: the
//! authenticated tenant ([`Tenant`], rate limited), a job id in the path ([`JobIdPath`]),
//! strict query parameters ([`StrictQuery`]) and a JSON body ([`JsonBody`]).

use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use bytes::{Bytes, BytesMut};
use ferry_core::auth::{bearer_key, hash_api_key};
use ferry_core::error::ApiError;
use ferry_core::input::{field_names, quote};
use ferry_core::job::{JobId, TenantId};
use http::request::Parts;
use http::{StatusCode, header};
use serde::de::DeserializeOwned;

use crate::error::HttpError;
use crate::state::AppState;

/// The tenant of the request's API key (`Authorization: Bearer <key>`), within its rate.
pub struct Tenant(pub TenantId);

impl FromRequestParts<AppState> for Tenant {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, api: &AppState) -> Result<Self, HttpError> {
        let header = match parts.headers.get(header::AUTHORIZATION) {
            None => return Err(ApiError::unauthorized("missing the header Authorization: Bearer <api key>").into()),
            Some(h) => h.to_str().map_err(|_| ApiError::unauthorized("malformed Authorization header"))?,
        };
        let key =
            bearer_key(header).ok_or_else(|| ApiError::unauthorized("expected Authorization: Bearer <api key>"))?;
        let tenant = match api.keys.lookup(&hash_api_key(key)).await? {
            Some(record) => record.tenant,
            None => return Err(ApiError::unauthorized("invalid API key").into()),
        };
        api.limiter
            .check(&tenant, api.service.clock.now())
            .map_err(|retry| ApiError::rate_limited("too many requests for this API key; slow down", retry))?;
        Ok(Tenant(tenant))
    }
}

/// The `{id}` of the path, a job id (ULIDs in any case).
pub struct JobIdPath(pub JobId);

impl<S: Send + Sync> FromRequestParts<S> for JobIdPath {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, HttpError> {
        let raw = match Path::<String>::from_request_parts(parts, state).await {
            // The router matches an empty segment (`/v1/jobs//cancel`): no such route.
            Ok(Path(raw)) if raw.is_empty() => return Err(crate::no_route().into()),
            Ok(Path(raw)) => raw,
            Err(_) => String::new(),
        };
        let id = raw.parse().map_err(|_| {
            ApiError::bad_request("id", format!("{} is not a job id (a 26-character ULID)", quote(&raw)))
        })?;
        Ok(JobIdPath(id))
    }
}

/// A route's query parameters: their type, and what to tell a client who got one wrong.
pub trait QueryParams: DeserializeOwned {
    /// The message for a wrong `field` (a bad type, or out of range).
    fn problem(field: &str) -> String;
    /// Ranges the type alone does not hold; the field out of range, if any.
    fn out_of_range(&self) -> Option<&'static str>;
}

/// Query parameters read strictly: an unknown or repeated parameter is a 400 naming it, as is
/// a value of the wrong type or out of range; an empty value (`?limit=`, from clients that
/// always send every parameter) means the parameter is not set.
pub struct StrictQuery<T>(pub T);

impl<T: QueryParams, S: Send + Sync> FromRequestParts<S> for StrictQuery<T> {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, HttpError> {
        let known = field_names::<T>();
        let mut set: Vec<(String, String)> = Vec::new();
        for (k, v) in parse_query(parts.uri.query().unwrap_or(""))? {
            if !known.contains(&k.as_str()) {
                let q = quote(&k);
                let message = format!("unknown query parameter {q}; known: {}", known.join(", "));
                return Err(ApiError::bad_request(k, message).into());
            }
            if v.is_empty() {
                continue;
            }
            if set.iter().any(|(seen, _)| *seen == k) {
                return Err(ApiError::bad_request(k.clone(), format!("query parameter {k} given twice")).into());
            }
            set.push((k, v));
        }
        let encoded = serde_urlencoded::to_string(&set).unwrap_or_default();
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(encoded.as_bytes()));
        let value: T = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            let field = if field == "." { "query".to_string() } else { field };
            ApiError::bad_request(field.clone(), T::problem(&field))
        })?;
        if let Some(field) = value.out_of_range() {
            return Err(ApiError::bad_request(field, T::problem(field)).into());
        }
        Ok(StrictQuery(value))
    }
}

/// `application/x-www-form-urlencoded` pairs, strict about bad escapes.
fn parse_query(q: &str) -> Result<Vec<(String, String)>, ApiError> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode(k).ok_or_else(|| ApiError::bad_request("query", "malformed query string"))?;
            let val = percent_decode(v).ok_or_else(|| ApiError::bad_request(key.clone(), "malformed query string"))?;
            Ok((key, val))
        })
        .collect()
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// A JSON request body, within `FERRY_MAX_BODY_BYTES` (413 beyond, judged by
/// `Content-Length` before anything is kept), not empty (400) and sent as
/// `application/json` in utf-8 (415). At most one byte past the limit is ever kept.
pub struct JsonBody(pub Bytes);

impl FromRequest<AppState> for JsonBody {
    type Rejection = HttpError;

    async fn from_request(req: Request, api: &AppState) -> Result<Self, HttpError> {
        let max = api.service.config.max_body_bytes;
        let too_large = || {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("the body is larger than {max} bytes"))
                .with_field("body")
        };
        let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if let Some(n) = declared.filter(|n| *n > max as u64) {
            // A body up to twice the limit is read (and dropped) first, so the client gets
            // the 413 rather than a connection reset mid-upload; a larger one is not read.
            if n <= 2 * max as u64 {
                let _ = drain(req.into_body()).await;
            }
            return Err(too_large().into());
        }
        let content_type = req.headers().get(header::CONTENT_TYPE).cloned();
        let body = read_limited(req.into_body(), max + 1)
            .await
            .map_err(|_| ApiError::bad_request("body", "the request body could not be read"))?;
        if body.len() > max {
            return Err(too_large().into());
        }
        if body.iter().all(|b| b.is_ascii_whitespace()) {
            return Err(ApiError::bad_request("body", "the request body is empty; expected a JSON object").into());
        }
        check_json_content_type(content_type.as_ref())?;
        Ok(JsonBody(body))
    }
}

/// Reads the body to its end, keeping nothing.
async fn drain(mut body: axum::body::Body) -> Result<(), axum::Error> {
    use http_body_util::BodyExt;
    while let Some(frame) = body.frame().await {
        frame?;
    }
    Ok(())
}

/// Reads at most `max` bytes of the body; anything beyond is not read.
pub async fn read_limited(body: axum::body::Body, max: usize) -> Result<Bytes, axum::Error> {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            let room = max.saturating_sub(buf.len());
            buf.extend_from_slice(&data[..data.len().min(room)]);
            if buf.len() >= max {
                break;
            }
        }
    }
    Ok(buf.freeze())
}

fn check_json_content_type(value: Option<&http::HeaderValue>) -> Result<(), ApiError> {
    let unsupported = |msg: &str| ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, msg).with_field("Content-Type");
    let Some(value) = value else {
        return Err(unsupported("send the body as JSON with Content-Type: application/json"));
    };
    let value = value.to_str().map_err(|_| unsupported("malformed Content-Type"))?.to_ascii_lowercase();
    let mut parts = value.split(';').map(str::trim);
    if parts.next() != Some("application/json") {
        return Err(unsupported("only application/json is accepted"));
    }
    for p in parts {
        if let Some(cs) = p.strip_prefix("charset=")
            && cs.trim_matches('"') != "utf-8"
        {
            return Err(unsupported("only the utf-8 charset is accepted"));
        }
    }
    Ok(())
}
