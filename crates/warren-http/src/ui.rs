//! The web UI (management console): static files embedded in the binary and served without
//! auth at `/` and `/ui/...`. The pages call the management API with basic auth themselves.

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// The UI's files: path under `/ui/`, content type, content.
const FILES: &[(&str, &str, &str)] = &[
    ("index.html", "text/html; charset=utf-8", include_str!("../ui/index.html")),
    ("app.js", "text/javascript; charset=utf-8", include_str!("../ui/app.js")),
    ("api.js", "text/javascript; charset=utf-8", include_str!("../ui/api.js")),
    ("chart.js", "text/javascript; charset=utf-8", include_str!("../ui/chart.js")),
    ("pages.js", "text/javascript; charset=utf-8", include_str!("../ui/pages.js")),
    ("style.css", "text/css; charset=utf-8", include_str!("../ui/style.css")),
];

/// The UI's routes (no auth; generic over the router's state so it merges anywhere).
pub(crate) fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/", get(index)).route("/ui/", get(index)).route("/ui/{file}", get(file))
}

async fn index() -> Response {
    serve("index.html")
}

async fn file(Path(name): Path<String>) -> Response {
    serve(&name)
}

fn serve(name: &str) -> Response {
    match FILES.iter().find(|(n, _, _)| *n == name) {
        Some((_, kind, body)) => {
            ([(header::CONTENT_TYPE, *kind), (header::CACHE_CONTROL, "no-cache")], *body).into_response()
        }
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}
