//! The web console: a page at `/` and its assets under `/console/`, all
//! embedded in the binary (the libraries come from npm at build time, see
//! `build.rs`), so a browser needs nothing but this server. The page reads
//! and acts through the same `/v1` routes the CLI uses; it has no data of its
//! own, which is why its files stay open when reads need a token (the user
//! types the token into the page).

use std::sync::Arc;

use axum::Router;
use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::ApiError;
use crate::node::Node;

/// One embedded file: its name under `/console/`, content type and bytes.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

const INDEX: &[u8] = include_bytes!("../../console/index.html");

const ASSETS: &[Asset] = &[
    Asset { name: "console.js", content_type: JS, bytes: include_bytes!("../../console/console.js") },
    Asset { name: "console.css", content_type: CSS, bytes: include_bytes!("../../console/console.css") },
    Asset { name: "dagre.min.js", content_type: JS, bytes: include_bytes!(env!("WEIR_CONSOLE_DAGRE_MIN_JS")) },
    Asset {
        name: "uPlot.iife.min.js",
        content_type: JS,
        bytes: include_bytes!(env!("WEIR_CONSOLE_UPLOT_IIFE_MIN_JS")),
    },
    Asset { name: "uPlot.min.css", content_type: CSS, bytes: include_bytes!(env!("WEIR_CONSOLE_UPLOT_MIN_CSS")) },
];

/// Whether a path is the console's (open without a token: no data there).
pub fn is_console_path(path: &str) -> bool {
    path == "/" || path.starts_with("/console/")
}

pub fn routes() -> Router<Arc<Node>> {
    Router::new().route("/", get(index)).route("/console/{file}", get(asset))
}

/// Headers of every console file: never framed by another site (the page
/// acts with the user's token), never sniffed as another type.
fn served(content_type: &'static str, bytes: &'static [u8]) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::CONTENT_SECURITY_POLICY, "frame-ancestors 'none'"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        bytes,
    )
        .into_response()
}

async fn index() -> Response {
    served("text/html; charset=utf-8", INDEX)
}

async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.name == file) {
        Some(a) => served(a.content_type, a.bytes),
        None => ApiError::new(StatusCode::NOT_FOUND, "not-found", format!("the console has no file `{file}`"))
            .into_response(),
    }
}
