//! Telling a studio that lacks an API from one that failed: what each
//! kind answers on a path it does not serve.

use axum::http::StatusCode;
use memchr::memmem;

/// Does this answer say the studio lacks the API (not that it failed)?
/// A 404 from any server, or LM Studio's 200 "Unexpected endpoint".
pub(crate) fn lacks_api(status: StatusCode, body: &[u8]) -> bool {
    let missing = status == StatusCode::NOT_FOUND || status == StatusCode::METHOD_NOT_ALLOWED;
    // Only an error object can be LM Studio's "Unexpected endpoint".
    let error_object = body.trim_ascii_start().starts_with(b"{")
        && body.trim_ascii_start()[1..]
            .trim_ascii_start()
            .starts_with(b"\"error\"");
    let unexpected = error_object && contains(body, b"Unexpected endpoint");
    (missing || unexpected) && !mentions_model(body)
}

/// A 404 about a model (Ollama's `model 'x' not found`) is about the
/// request, not the API.
fn mentions_model(body: &[u8]) -> bool {
    let lower: Vec<u8> = body.iter().map(u8::to_ascii_lowercase).collect();
    contains(&lower, b"model") && !contains(&lower, b"unexpected endpoint")
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    memmem::find(hay, needle).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_api_is_told_from_a_missing_model() {
        assert!(lacks_api(StatusCode::NOT_FOUND, b"404 page not found"));
        assert!(lacks_api(
            StatusCode::OK,
            br#"{"error":"Unexpected endpoint or method. (POST /api/chat)"}"#
        ));
        assert!(!lacks_api(
            StatusCode::NOT_FOUND,
            br#"{"error":"model 'llama3' not found"}"#
        ));
        assert!(!lacks_api(StatusCode::BAD_REQUEST, b"bad"));
    }
}
