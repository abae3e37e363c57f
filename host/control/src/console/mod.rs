//! The web console: pages for operators, served by the admin server.
//!
//! | route | what it is |
//! | --- | --- |
//! | `GET /` | a redirect to `/console` |
//! | `GET /console` | overview: every pipeline, its rates, lag, last checkpoint, errors |
//! | `GET /console/pipelines/{pipeline}` | one pipeline: its stages, checkpoint history, modules and swaps, actions |
//! | `GET /console/tenants` | every tenant's quotas and usage |
//! | `GET /console/cluster` | a cluster worker's view (members, partitions, owners) |
//! | `GET /console/api/overview` | the overview's JSON ([`model::Overview`]) |
//! | `GET /console/api/pipelines/{pipeline}` | a pipeline's JSON ([`model::PipelineDetail`]) |
//! | `GET /console/api/tenants` | the tenants' JSON ([`model::TenantView`]) |
//! | `GET /console/assets/…` | the stylesheet and the script, built into the binary |
//!
//! Every page is rendered on the server, so it reads without JavaScript;
//! the script (one file, no inline code: the pages' content security
//! policy is `default-src 'self'`) polls the JSON to keep the numbers
//! live, backing off while the server does not answer, and performs the
//! actions through the admin API (`POST /pipelines/…`) with the token the
//! operator typed. Nothing under `/console` changes anything: every route
//! here is a `GET`, and the admin server's guard (`Host`, `Origin`, token,
//! content type) applies to them as to the rest of the API.

mod html;
pub mod model;

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::admin::{AdminControl, AdminError};
use model::{Overview, PipelineDetail, TenantView};

/// The content security policy of every console response: only this
/// server's own script, styles and connections; no inline script or style,
/// no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const STYLESHEET: &str = include_str!("../../assets/console.css");
const SCRIPT: &str = include_str!("../../assets/console.js");

#[derive(Clone)]
struct ConsoleState {
    control: Arc<dyn AdminControl>,
    /// Whether actions need the admin token (the pages then ask for it).
    token_required: bool,
}

/// The console's routes, for the admin server to merge into its own.
pub(crate) fn router(control: Arc<dyn AdminControl>, token_required: bool) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/console") }))
        .route("/console", get(overview_page))
        .route("/console/", get(|| async { Redirect::to("/console") }))
        .route("/console/pipelines/{pipeline}", get(pipeline_page))
        .route("/console/tenants", get(tenants_page))
        .route("/console/cluster", get(cluster_page))
        .route("/console/api/overview", get(overview_json))
        .route("/console/api/pipelines/{pipeline}", get(pipeline_json))
        .route("/console/api/tenants", get(tenants_json))
        .route("/console/assets/console.css", get(stylesheet))
        .route("/console/assets/console.js", get(script))
        .layer(axum::middleware::map_response(secure_headers))
        .with_state(ConsoleState {
            control,
            token_required,
        })
}

/// The headers every console response carries.
async fn secure_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

fn html_page(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

fn now_ms() -> u64 {
    plumber_engine::recent::unix_ms()
}

fn overview(control: &dyn AdminControl) -> Overview {
    Overview {
        at_ms: now_ms(),
        pipelines: control.overview(),
    }
}

async fn overview_page(State(state): State<ConsoleState>) -> Response {
    let overview = overview(state.control.as_ref());
    html_page(StatusCode::OK, html::overview(&overview))
}

async fn pipeline_page(
    State(state): State<ConsoleState>,
    Path(pipeline): Path<String>,
) -> Response {
    match state.control.detail(&pipeline) {
        Some(detail) => html_page(
            StatusCode::OK,
            html::pipeline(&detail, now_ms(), state.token_required),
        ),
        None => html_page(
            StatusCode::NOT_FOUND,
            html::not_found(&format!("No pipeline `{pipeline}` runs here.")),
        ),
    }
}

async fn tenants_page(State(state): State<ConsoleState>) -> Response {
    html_page(StatusCode::OK, html::tenants(&state.control.tenants()))
}

async fn cluster_page(State(state): State<ConsoleState>) -> Response {
    let cluster = state.control.cluster().await;
    html_page(StatusCode::OK, html::cluster(&cluster))
}

async fn overview_json(State(state): State<ConsoleState>) -> Json<Overview> {
    Json(overview(state.control.as_ref()))
}

async fn pipeline_json(
    State(state): State<ConsoleState>,
    Path(pipeline): Path<String>,
) -> Result<Json<PipelineDetail>, AdminError> {
    state
        .control
        .detail(&pipeline)
        .map(Json)
        .ok_or(AdminError::UnknownPipeline(pipeline))
}

async fn tenants_json(State(state): State<ConsoleState>) -> Json<Vec<TenantView>> {
    Json(state.control.tenants())
}

async fn stylesheet() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        STYLESHEET,
    )
        .into_response()
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
        .into_response()
}

#[cfg(test)]
mod tests;
