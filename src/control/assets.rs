//! The dashboard's files (`ui/`). Release builds embed them; debug builds
//! read them from the source tree, so UI work needs no rebuild.

use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

#[derive(rust_embed::Embed)]
#[folder = "ui/"]
struct Ui;

/// `GET /` and `GET /ui/...`.
pub(super) async fn serve(uri: Uri) -> Response {
    let path = uri.path().trim_start_matches('/');
    let path = match path {
        "" | "index.html" => "index.html",
        p => p.strip_prefix("ui/").unwrap_or(p),
    };
    match Ui::get(path) {
        Some(file) => (
            [
                (header::CONTENT_TYPE, file.metadata.mimetype().to_string()),
                // The page holds the token in memory only; never cache it
                // where another profile could read it.
                (header::CACHE_CONTROL, "no-store".to_string()),
                (
                    header::CONTENT_SECURITY_POLICY,
                    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'".to_string(),
                ),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
            ],
            file.data,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

/// Total size of the UI's files, in bytes (for the README's figures).
#[cfg(test)]
pub fn total_bytes() -> usize {
    Ui::iter()
        .filter_map(|p| Ui::get(&p).map(|f| f.data.len()))
        .sum()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_dashboard_has_an_index_page() {
        assert!(super::Ui::get("index.html").is_some());
        eprintln!("the UI is {} bytes", super::total_bytes());
    }
}
