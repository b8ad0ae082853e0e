//! The API's JSON in and out: request bodies read through one extractor,
//! and the one error answer, `{"error": {message, fix?, field?, code?}}`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::engine::EngineError;
use crate::store::StoreError;

/// An error answer: `{"error": {message, fix?, field?, code?}}`.
pub(super) struct ApiError(pub(super) StatusCode, pub(super) Value);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        use crate::balancer::Error as B;
        let status = match &e {
            EngineError::Config(_) | EngineError::Invalid(_) => StatusCode::BAD_REQUEST,
            EngineError::Balancer(B::NeedsApiKey(_) | B::AnyOriginNeedsApiKey) => {
                StatusCode::BAD_REQUEST
            }
            EngineError::Balancer(B::Bind { .. }) => StatusCode::CONFLICT,
            EngineError::UnknownWorker(_) | EngineError::UnknownJob(_) => StatusCode::NOT_FOUND,
            EngineError::Balancer(B::UnknownWorker(_)) => StatusCode::NOT_FOUND,
            EngineError::Busy(..) | EngineError::FileExists { .. } => StatusCode::CONFLICT,
            EngineError::Secret(crate::secrets::SecretError::Refused(_)) => StatusCode::BAD_REQUEST,
            EngineError::Store(StoreError::NoSuchRun(_)) => StatusCode::NOT_FOUND,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let j = e.to_job_error();
        let mut err = json!({"message": j.message});
        if let Some(f) = j.fix {
            err["fix"] = f.into();
        }
        if let Some(f) = e.field() {
            err["field"] = f.into();
        }
        if let Some(c) = j.code {
            err["code"] = serde_json::to_value(c).unwrap_or_default();
        }
        ApiError(status, json!({ "error": err }))
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        EngineError::from(e).into()
    }
}

pub(super) fn bad_request(message: &str, fix: &str) -> ApiError {
    ApiError(
        StatusCode::BAD_REQUEST,
        json!({"error": {"message": message, "fix": fix}}),
    )
}

pub(super) type Api<T> = Result<T, ApiError>;

/// A request body as JSON. Whatever the `Content-Type` (the dashboard and
/// `curl -d` send different ones), and an empty body reads as `{}`, so a
/// route whose fields all default takes no body at all.
pub(super) struct JsonBody<T>(pub(super) T);

/// Why a body was not taken: it could not be read (axum's own answer, as
/// for any route: too large, cut off), or it is not what the route takes
/// (the API's JSON error, naming the field serde stopped at).
pub(super) enum BodyRejection {
    Unreadable(BytesRejection),
    Invalid(ApiError),
}

impl IntoResponse for BodyRejection {
    fn into_response(self) -> Response {
        match self {
            BodyRejection::Unreadable(r) => r.into_response(),
            BodyRejection::Invalid(e) => e.into_response(),
        }
    }
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = BodyRejection;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let raw = Bytes::from_request(req, state)
            .await
            .map_err(BodyRejection::Unreadable)?;
        parse(&raw).map(JsonBody).map_err(BodyRejection::Invalid)
    }
}

fn parse<T: DeserializeOwned>(raw: &[u8]) -> Api<T> {
    let text = if raw.iter().all(u8::is_ascii_whitespace) {
        &b"{}"[..]
    } else {
        raw
    };
    serde_json::from_slice(text).map_err(|e| {
        bad_request(
            &format!("the request body is not what this route takes: {e}"),
            "see docs/CONTROL_API.md for the fields",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, Default, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Listen {
        listen: Option<String>,
    }

    async fn take(body: impl Into<Body>) -> Result<Listen, (StatusCode, String)> {
        let req = Request::builder().body(body.into()).unwrap();
        match JsonBody::<Listen>::from_request(req, &()).await {
            Ok(JsonBody(l)) => Ok(l),
            Err(r) => {
                let r = r.into_response();
                let status = r.status();
                let bytes = axum::body::to_bytes(r.into_body(), usize::MAX)
                    .await
                    .unwrap();
                Err((status, String::from_utf8(bytes.to_vec()).unwrap()))
            }
        }
    }

    #[tokio::test]
    async fn an_empty_or_blank_body_reads_as_an_empty_object() {
        assert_eq!(take("").await.unwrap(), Listen::default());
        assert_eq!(take(" \n\t").await.unwrap(), Listen::default());
        assert_eq!(
            take(r#"{"listen":"127.0.0.1:1"}"#).await.unwrap().listen,
            Some("127.0.0.1:1".into())
        );
    }

    #[tokio::test]
    async fn a_body_the_route_does_not_take_is_the_apis_json_error() {
        let (status, body) = take(r#"{"port":1}"#).await.unwrap_err();
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            body,
            r#"{"error":{"message":"the request body is not what this route takes: unknown field `port`, expected `listen` at line 1 column 7","fix":"see docs/CONTROL_API.md for the fields"}}"#
        );
        let (status, body) = take("not json").await.unwrap_err();
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("expected ident at line 1 column 2"), "{body}");
    }

    #[tokio::test]
    async fn a_body_that_cannot_be_read_keeps_axums_own_answer() {
        // Past axum's default 2 MB limit: 413 in axum's words, as before
        // the extractor.
        let (status, body) = take(vec![b' '; 3 << 20]).await.unwrap_err();
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            body,
            "Failed to buffer the request body: length limit exceeded"
        );
    }
}
