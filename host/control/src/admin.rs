//! The admin and metrics HTTP server.
//!
//! | route | what it does |
//! | --- | --- |
//! | `GET /health` | `200 ok` while the process is alive |
//! | `GET /ready` | `200 ready` once every pipeline started, `503 starting` before |
//! | `GET /metrics` | Prometheus text format 0.0.4 |
//! | `GET /pipelines` | JSON array of [`PipelineStatus`] |
//! | `POST /pipelines/{pipeline}/checkpoint` | checkpoint now; JSON [`CheckpointDone`] |
//! | `POST /pipelines/{pipeline}/pipes/{pipe}/module` | replace a pipe's module; JSON [`SwapDone`] |
//! | `POST /pipelines/{pipeline}/stop` | drain and stop it: a final checkpoint, then it ends; JSON [`StopRequested`] |
//! | `GET /cluster` | a cluster worker's view: its id, the members, the partitions it owns (JSON); 404 from `plumber run` |
//! | `GET /console…` | the web console ([`crate::console`]): pages, assets and their JSON |
//!
//! The module upload takes either JSON `{"path": "..."}` (with
//! `Content-Type: application/json`; only a file inside the configured
//! module directory, [`AdminOptions::module_dir`]) or the component's bytes
//! (`Content-Type: application/wasm`), up to [`MAX_BODY_BYTES`].
//!
//! Errors are JSON `{"error": "<message>"}`: 404 for an unknown pipeline or
//! pipe, 422 for a refused module, 503 when the pipeline cannot do it now,
//! 400 for a bad body, 401 for a missing or wrong token, 403 for a
//! cross-origin request or a module path outside the module directory, 415
//! for a `POST` that is neither JSON nor WebAssembly, 421 for a request
//! whose `Host` is not this server.
//!
//! With a token configured, every call other than `GET`/`HEAD` needs
//! `Authorization: Bearer <token>`. Without one, the server only listens on
//! loopback addresses ([`AdminServer::start`] refuses anything else) and
//! answers only requests addressed to it by a loopback name
//! (`Host: 127.0.0.1:PORT`, `localhost:PORT`, `[::1]:PORT` or its listen
//! address): a page in a browser on the same machine cannot reach it
//! through a DNS name of its own. In both cases a request with an `Origin`
//! other than the server's own is refused, and a `POST` must say it is JSON
//! or WebAssembly, which a browser cannot send across origins without the
//! preflight this server never grants: a web page cannot swap a module or
//! take a checkpoint.
//!
//! What the server controls is behind the [`AdminControl`] trait, which the
//! engine implements.

use std::net::SocketAddr;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::console::model::{PipelineDetail, PipelineLive, StopRequested, TenantView};

/// The largest request body accepted: room for a component upload.
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// The default admin address: loopback only, Prometheus' usual port range
/// (the host config's default, defined beside it).
pub const DEFAULT_LISTEN: SocketAddr = plumber_engine::config::DEFAULT_ADMIN_LISTEN;

/// The `Content-Type` of `GET /metrics`.
const METRICS_CONTENT_TYPE: &str = crate::metrics::CONTENT_TYPE;

/// What the admin server asks of the engine.
#[async_trait::async_trait]
pub trait AdminControl: Send + Sync + 'static {
    /// Everything running, for `GET /pipelines`.
    fn pipelines(&self) -> Vec<PipelineStatus>;

    /// True once every pipeline has started (restored its checkpoint and
    /// loaded its pipes).
    fn ready(&self) -> bool;

    /// Prometheus text for `GET /metrics`.
    fn metrics(&self) -> String;

    /// A cluster worker's view for `GET /cluster` (its id, the members, the
    /// partitions it owns); what is not a cluster worker has none.
    ///
    /// # Errors
    ///
    /// [`AdminError::NotClustered`] by default; a worker's own errors
    /// (e.g. [`AdminError::Unavailable`] when its servers do not answer).
    async fn cluster(&self) -> Result<serde_json::Value, AdminError> {
        Err(AdminError::NotClustered)
    }

    /// Every pipeline as the console's overview shows it; by default what
    /// [`AdminControl::pipelines`] says.
    fn overview(&self) -> Vec<PipelineLive> {
        self.pipelines()
            .iter()
            .map(PipelineLive::from_status)
            .collect()
    }

    /// Everything the console's page of `pipeline` shows (stages,
    /// checkpoint history, modules and their swaps); `None` for an unknown
    /// pipeline, or by default.
    fn detail(&self, pipeline: &str) -> Option<PipelineDetail> {
        let _ = pipeline;
        None
    }

    /// Every tenant's quotas and usage, for the console; none by default.
    fn tenants(&self) -> Vec<TenantView> {
        Vec::new()
    }

    /// Asks `pipeline` to drain and stop (a final checkpoint, then it
    /// ends); returns once asked, not once stopped.
    ///
    /// # Errors
    ///
    /// [`AdminError::UnknownPipeline`] if there is no such pipeline,
    /// [`AdminError::Unavailable`] if it cannot be stopped from here (by
    /// default).
    async fn stop(&self, pipeline: &str) -> Result<StopRequested, AdminError> {
        Err(AdminError::Unavailable(format!(
            "pipeline `{pipeline}` cannot be stopped through this server"
        )))
    }

    /// Takes a checkpoint of `pipeline` now and returns once it is committed.
    ///
    /// # Errors
    ///
    /// [`AdminError::UnknownPipeline`] if there is no such pipeline,
    /// [`AdminError::Unavailable`] if it cannot checkpoint now (e.g. it
    /// stopped).
    async fn checkpoint(&self, pipeline: &str) -> Result<CheckpointDone, AdminError>;

    /// Replaces the module of `pipe` in `pipeline`; returns once the new
    /// module runs (or was refused).
    ///
    /// # Errors
    ///
    /// [`AdminError::UnknownPipeline`] or [`AdminError::UnknownPipe`] if
    /// there is no such pipeline or pipe, [`AdminError::Refused`] if the
    /// module cannot replace the old one (does not load, wrong world, ...),
    /// [`AdminError::Unavailable`] if the pipeline cannot swap now.
    async fn swap_module(
        &self,
        pipeline: &str,
        pipe: &str,
        module: ModuleUpload,
    ) -> Result<SwapDone, AdminError>;
}

/// One pipeline, as `GET /pipelines` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PipelineStatus {
    /// The pipeline's name.
    pub name: String,
    /// The tenant it runs for.
    pub tenant: String,
    /// `"starting"`, `"running"`, `"stopped"` or `"failed"`.
    pub state: String,
    /// Events read from the source.
    pub events_in: u64,
    /// Events written to the sink.
    pub events_out: u64,
    /// Epoch of the last committed checkpoint, if any.
    pub last_checkpoint_epoch: Option<u64>,
    /// Milliseconds since the last committed checkpoint, if any.
    pub last_checkpoint_age_ms: Option<u64>,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// Its WASM pipes, in order.
    pub pipes: Vec<PipeStatus>,
}

/// One WASM pipe of a pipeline.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PipeStatus {
    /// The pipe's name.
    pub name: String,
    /// The path of the module it runs.
    pub module: String,
    /// The module's version: a short SHA-256 hex digest.
    pub version: String,
}

/// A checkpoint taken on request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CheckpointDone {
    /// The pipeline checkpointed.
    pub pipeline: String,
    /// The epoch committed.
    pub epoch: u64,
}

/// A module replaced on request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SwapDone {
    /// The pipeline.
    pub pipeline: String,
    /// The pipe whose module was replaced.
    pub pipe: String,
    /// The new module's version.
    pub version: String,
    /// The replaced module's version.
    pub previous_version: String,
}

/// A new module for a pipe, as uploaded.
#[derive(Clone, PartialEq, Eq)]
pub enum ModuleUpload {
    /// A path to read it from, as sent (absolute or relative to the
    /// engine's working directory).
    Path(PathBuf),
    /// The component's bytes.
    Bytes(Vec<u8>),
}

impl std::fmt::Debug for ModuleUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModuleUpload::Path(path) => f.debug_tuple("Path").field(path).finish(),
            // A component is megabytes; its length is what a log needs.
            ModuleUpload::Bytes(bytes) => write!(f, "Bytes({} bytes)", bytes.len()),
        }
    }
}

/// Why an admin call failed; each maps to an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No pipeline by that name (404).
    #[error("no pipeline `{0}`")]
    UnknownPipeline(String),
    /// The pipeline has no pipe by that name (404).
    #[error("pipeline `{pipeline}` has no pipe `{pipe}`")]
    UnknownPipe {
        /// The pipeline.
        pipeline: String,
        /// The pipe asked for.
        pipe: String,
    },
    /// The module cannot replace the running one (422).
    #[error("module refused: {0}")]
    Refused(String),
    /// The pipeline cannot do it now, e.g. it stopped (503).
    #[error("{0}")]
    Unavailable(String),
    /// `GET /cluster` of a process that is not a cluster worker (404).
    #[error("not a cluster worker: `GET /cluster` is served by `plumber worker`")]
    NotClustered,
}

impl AdminError {
    /// The HTTP status this error is answered with.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            AdminError::UnknownPipeline(_)
            | AdminError::UnknownPipe { .. }
            | AdminError::NotClustered => StatusCode::NOT_FOUND,
            AdminError::Refused(_) => StatusCode::UNPROCESSABLE_ENTITY,
            AdminError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        error_response(self.status(), self.to_string())
    }
}

/// Where the admin server listens and who may change things.
#[derive(Clone)]
pub struct AdminOptions {
    /// The address to listen on; [`DEFAULT_LISTEN`] (`127.0.0.1:9464`) by
    /// default.
    pub listen: SocketAddr,
    /// The bearer token mutating calls need; required unless `listen` is a
    /// loopback address.
    pub token: Option<String>,
    /// The directory `{"path": …}` module swaps may read from (a path is
    /// taken relative to it, and must name a file inside it once symbolic
    /// links are resolved); `None` refuses path swaps (uploads of the
    /// component's bytes still work).
    pub module_dir: Option<PathBuf>,
}

impl Default for AdminOptions {
    fn default() -> Self {
        AdminOptions {
            listen: DEFAULT_LISTEN,
            token: None,
            module_dir: None,
        }
    }
}

impl std::fmt::Debug for AdminOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keep the token out of logs.
        f.debug_struct("AdminOptions")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("module_dir", &self.module_dir)
            .finish()
    }
}

/// Why the admin server did not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminServerError {
    /// The address could not be bound.
    #[error("admin server cannot listen on {addr}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A non-loopback address without a token: anyone on the network could
    /// checkpoint pipelines and replace modules.
    #[error(
        "admin server on non-loopback address {0} needs a token \
         (its mutating calls would be open to the network)"
    )]
    TokenRequired(SocketAddr),
    /// The token is empty or only whitespace.
    #[error("admin token is empty")]
    EmptyToken,
    /// The module directory does not exist or cannot be read.
    #[error("admin module directory `{path}`")]
    ModuleDir {
        /// The directory given.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// A running admin server. Dropping it also shuts it down, without waiting.
#[derive(Debug)]
pub struct AdminServer {
    local_addr: SocketAddr,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl AdminServer {
    /// Binds `options.listen` and serves in a tokio task.
    ///
    /// # Errors
    ///
    /// [`AdminServerError::Bind`] (naming the address) if it cannot be
    /// bound; [`AdminServerError::TokenRequired`] if `listen` is not a
    /// loopback address and no token is set;
    /// [`AdminServerError::EmptyToken`] for an empty token;
    /// [`AdminServerError::ModuleDir`] for a module directory that cannot
    /// be resolved.
    pub async fn start(
        options: AdminOptions,
        control: Arc<dyn AdminControl>,
    ) -> Result<AdminServer, AdminServerError> {
        Self::start_with_limit(options, control, MAX_BODY_BYTES).await
    }

    async fn start_with_limit(
        options: AdminOptions,
        control: Arc<dyn AdminControl>,
        body_limit: usize,
    ) -> Result<AdminServer, AdminServerError> {
        let addr = options.listen;
        let token_digest = match &options.token {
            Some(token) if token.trim().is_empty() => return Err(AdminServerError::EmptyToken),
            Some(token) => Some(digest(token.as_bytes())),
            // `to_canonical` so that `::ffff:127.0.0.1` counts as loopback.
            None if addr.ip().to_canonical().is_loopback() => None,
            None => return Err(AdminServerError::TokenRequired(addr)),
        };
        let module_dir = match &options.module_dir {
            Some(dir) => Some(tokio::fs::canonicalize(dir).await.map_err(|source| {
                AdminServerError::ModuleDir {
                    path: dir.clone(),
                    source,
                }
            })?),
            None => None,
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| AdminServerError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| AdminServerError::Bind { addr, source })?;

        let app = router(
            AppState {
                control,
                token_digest,
                own_hosts: Arc::new(own_hosts(local_addr)),
                module_dir: module_dir.map(Arc::new),
            },
            body_limit,
        );
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    // A dropped sender means the server handle was dropped:
                    // shut down then too.
                    let _ = stopped.await;
                })
                .await;
            if let Err(error) = served {
                tracing::error!(%local_addr, %error, "admin server failed");
            }
        });
        tracing::info!(%local_addr, "admin server listening");
        Ok(AdminServer {
            local_addr,
            shutdown,
            task,
        })
    }

    /// The address actually bound (useful with port 0).
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting connections and waits for requests in flight to
    /// finish.
    pub async fn stop(self) {
        // The task may have ended already (serve failed); nothing to signal then.
        let _ = self.shutdown.send(());
        if let Err(error) = self.task.await {
            tracing::error!(%error, "admin server task ended abnormally");
        }
    }
}

#[derive(Clone)]
struct AppState {
    control: Arc<dyn AdminControl>,
    /// SHA-256 of the configured token: comparing digests takes the same
    /// time whatever the presented token's length or content.
    token_digest: Option<[u8; 32]>,
    /// The `Host` values (lowercase `name:port`) a request without a token
    /// may carry: the loopback names of the bound address.
    own_hosts: Arc<Vec<String>>,
    /// The canonical module directory path swaps are confined to.
    module_dir: Option<Arc<PathBuf>>,
}

/// The names this server answers to without a token, as `host:port`.
fn own_hosts(local_addr: SocketAddr) -> Vec<String> {
    let port = local_addr.port();
    let mut hosts = vec![
        local_addr.to_string(),
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
    ];
    hosts
        .iter_mut()
        .for_each(|host| host.make_ascii_lowercase());
    hosts.dedup();
    hosts
}

/// A `Host` value as `host:port` in lowercase (port 80 when absent).
fn normalized_host(host: &str) -> String {
    let host = host.trim().to_ascii_lowercase();
    // `[::1]` and `name` have no port; `[::1]:80` and `name:80` do.
    let has_port = match host.rfind(']') {
        Some(end) => host[end..].contains(':'),
        None => host.contains(':'),
    };
    if has_port {
        host
    } else {
        format!("{host}:80")
    }
}

fn router(state: AppState, body_limit: usize) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/pipelines", get(pipelines))
        .route("/cluster", get(cluster))
        .route("/pipelines/{pipeline}/checkpoint", post(checkpoint))
        .route("/pipelines/{pipeline}/stop", post(stop))
        .route(
            "/pipelines/{pipeline}/pipes/{pipe}/module",
            post(swap_module),
        )
        .with_state(state.clone())
        .merge(crate::console::router(
            state.control.clone(),
            state.token_digest.is_some(),
        ))
        .fallback(no_route)
        // Checked before any body is read, so an unauthenticated client
        // cannot make the server buffer an upload.
        .layer(middleware::from_fn_with_state(state, guard))
        .layer(DefaultBodyLimit::max(body_limit))
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Keep the compiler from turning the fold into an early exit.
    std::hint::black_box(diff) == 0
}

/// The token of an `Authorization: Bearer <token>` header (scheme
/// case-insensitive).
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim_start())
}

/// The checks every request passes before it is routed: its `Host`
/// (without a token), its `Origin`, the token, and the content type of a
/// `POST`.
async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
        .or_else(|| request.uri().authority().map(|a| a.as_str().to_owned()));
    if state.token_digest.is_none() {
        let own = host
            .as_deref()
            .is_some_and(|host| state.own_hosts.contains(&normalized_host(host)));
        if !own {
            return error_response(
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "this admin server answers to {} only (Host was {})",
                    state.own_hosts.join(", "),
                    host.map_or("missing".to_owned(), |h| format!("`{h}`")),
                ),
            );
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let own_origin = host.as_deref().map(|host| format!("http://{host}"));
        let same = origin
            .to_str()
            .ok()
            .zip(own_origin.as_deref())
            .is_some_and(|(origin, own)| origin.eq_ignore_ascii_case(own));
        if !same {
            return error_response(
                StatusCode::FORBIDDEN,
                format!(
                    "cross-origin request refused (Origin {:?})",
                    String::from_utf8_lossy(origin.as_bytes())
                ),
            );
        }
    }
    if matches!(*request.method(), Method::GET | Method::HEAD) {
        return next.run(request).await;
    }
    if let Some(expected) = &state.token_digest {
        let presented = bearer_token(headers).map(|t| digest(t.as_bytes()));
        if !presented.is_some_and(|presented| constant_time_eq(&presented, expected)) {
            return error_response(StatusCode::UNAUTHORIZED, "missing or wrong admin token");
        }
    }
    if upload_kind(headers).is_none() {
        return error_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "a POST needs `Content-Type: application/json` (a module path, or no body) \
             or `Content-Type: application/wasm` (a component's bytes)",
        );
    }
    next.run(request).await
}

/// What a request's body is, by its content type (parameters ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UploadKind {
    /// `application/json`.
    Json,
    /// `application/wasm`.
    Wasm,
}

fn upload_kind(headers: &HeaderMap) -> Option<UploadKind> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let essence = value.split(';').next().unwrap_or(value).trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Some(UploadKind::Json)
    } else if essence.eq_ignore_ascii_case("application/wasm") {
        Some(UploadKind::Wasm)
    } else {
        None
    }
}

fn error_response(status: StatusCode, message: impl Into<String>) -> Response {
    let message: String = message.into();
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

async fn health() -> &'static str {
    "ok"
}

async fn ready(State(state): State<AppState>) -> Response {
    if state.control.ready() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting").into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        state.control.metrics(),
    )
        .into_response()
}

async fn cluster(State(state): State<AppState>) -> Result<Json<serde_json::Value>, AdminError> {
    state.control.cluster().await.map(Json)
}

async fn pipelines(State(state): State<AppState>) -> Json<Vec<PipelineStatus>> {
    Json(state.control.pipelines())
}

async fn checkpoint(
    State(state): State<AppState>,
    Path(pipeline): Path<String>,
) -> Result<Json<CheckpointDone>, AdminError> {
    state.control.checkpoint(&pipeline).await.map(Json)
}

async fn stop(
    State(state): State<AppState>,
    Path(pipeline): Path<String>,
) -> Result<Json<StopRequested>, AdminError> {
    state.control.stop(&pipeline).await.map(Json)
}

/// The JSON form of a module upload.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PathUpload {
    path: PathBuf,
}

async fn swap_module(
    State(state): State<AppState>,
    Path((pipeline, pipe)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        // Too large (413) or a broken connection: keep the JSON error shape.
        Err(rejection) => return error_response(rejection.status(), rejection.body_text()),
    };
    let module = match parse_upload(&headers, &body) {
        Ok(module) => module,
        Err(message) => return error_response(StatusCode::BAD_REQUEST, message),
    };
    let module = match module {
        ModuleUpload::Path(path) => {
            match resolve_module_path(state.module_dir.as_deref(), &path).await {
                Ok(path) => ModuleUpload::Path(path),
                Err(message) => return error_response(StatusCode::FORBIDDEN, message),
            }
        }
        bytes => bytes,
    };
    match state.control.swap_module(&pipeline, &pipe, module).await {
        Ok(done) => Json(done).into_response(),
        Err(error) => error.into_response(),
    }
}

/// The upload in `body`: a JSON path for `application/json`, the bytes for
/// `application/wasm` (the guard has refused anything else).
fn parse_upload(headers: &HeaderMap, body: &[u8]) -> Result<ModuleUpload, String> {
    if upload_kind(headers) == Some(UploadKind::Json) {
        let upload: PathUpload = serde_json::from_slice(body)
            .map_err(|error| format!("expected {{\"path\": \"...\"}}: {error}"))?;
        if upload.path.as_os_str().is_empty() {
            return Err("module path is empty".to_owned());
        }
        Ok(ModuleUpload::Path(upload.path))
    } else if body.is_empty() {
        Err("empty body: send the component's bytes or JSON {\"path\": \"...\"}".to_owned())
    } else {
        Ok(ModuleUpload::Bytes(body.to_vec()))
    }
}

/// The canonical path of a module file inside `module_dir` (`path` is
/// taken relative to it). Every refusal is the same message, so an answer
/// never says whether a file outside the directory exists.
async fn resolve_module_path(
    module_dir: Option<&PathBuf>,
    path: &FsPath,
) -> Result<PathBuf, String> {
    let Some(dir) = module_dir else {
        return Err(
            "module path swaps are off: the admin server has no module directory \
             (`admin.module_dir` in the host config, `--module-dir` for `plumber run`); \
             send the component's bytes with `Content-Type: application/wasm` instead"
                .to_owned(),
        );
    };
    let refused = || {
        format!(
            "module path `{}` is not a file inside the module directory `{}`",
            path.display(),
            dir.display()
        )
    };
    let resolved = tokio::fs::canonicalize(dir.join(path))
        .await
        .map_err(|_| refused())?;
    if !resolved.starts_with(dir.as_path()) {
        return Err(refused());
    }
    match tokio::fs::metadata(&resolved).await {
        Ok(metadata) if metadata.is_file() => Ok(resolved),
        _ => Err(refused()),
    }
}

async fn no_route(method: Method, uri: Uri) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        format!("no route {method} {}", uri.path()),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    use serde_json::{json, Value};

    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    enum Call {
        Checkpoint(String),
        Swap(String, String, ModuleUpload),
    }

    /// Records calls; knows pipeline `orders` (pipe `enrich`) and the
    /// stopped pipeline `halted`.
    #[derive(Default)]
    struct Recorder {
        ready: AtomicBool,
        calls: Mutex<Vec<Call>>,
    }

    impl Recorder {
        fn calls(&self) -> Vec<Call> {
            self.calls.lock().unwrap().clone()
        }

        fn known(&self, pipeline: &str) -> Result<(), AdminError> {
            match pipeline {
                "orders" => Ok(()),
                "halted" => Err(AdminError::Unavailable(format!(
                    "pipeline `{pipeline}` is stopped"
                ))),
                _ => Err(AdminError::UnknownPipeline(pipeline.to_owned())),
            }
        }
    }

    #[async_trait::async_trait]
    impl AdminControl for Recorder {
        fn pipelines(&self) -> Vec<PipelineStatus> {
            vec![PipelineStatus {
                name: "orders".into(),
                tenant: "acme".into(),
                state: "running".into(),
                events_in: 10,
                events_out: 9,
                last_checkpoint_epoch: Some(3),
                last_checkpoint_age_ms: Some(1500),
                error: None,
                pipes: vec![PipeStatus {
                    name: "enrich".into(),
                    module: "pipes/enrich.wasm".into(),
                    version: "00ff00ff".into(),
                }],
            }]
        }

        fn ready(&self) -> bool {
            self.ready.load(Ordering::SeqCst)
        }

        fn metrics(&self) -> String {
            "# HELP up Up.\n# TYPE up gauge\nup 1\n".to_owned()
        }

        async fn checkpoint(&self, pipeline: &str) -> Result<CheckpointDone, AdminError> {
            self.calls
                .lock()
                .unwrap()
                .push(Call::Checkpoint(pipeline.to_owned()));
            self.known(pipeline)?;
            Ok(CheckpointDone {
                pipeline: pipeline.to_owned(),
                epoch: 4,
            })
        }

        async fn swap_module(
            &self,
            pipeline: &str,
            pipe: &str,
            module: ModuleUpload,
        ) -> Result<SwapDone, AdminError> {
            self.calls.lock().unwrap().push(Call::Swap(
                pipeline.to_owned(),
                pipe.to_owned(),
                module.clone(),
            ));
            self.known(pipeline)?;
            if pipe != "enrich" {
                return Err(AdminError::UnknownPipe {
                    pipeline: pipeline.to_owned(),
                    pipe: pipe.to_owned(),
                });
            }
            let refused = match &module {
                ModuleUpload::Bytes(bytes) => bytes.as_slice() == b"not a component",
                ModuleUpload::Path(path) => path.ends_with("bad.wasm"),
            };
            if refused {
                return Err(AdminError::Refused("not a pipe component".into()));
            }
            Ok(SwapDone {
                pipeline: pipeline.to_owned(),
                pipe: pipe.to_owned(),
                version: "abcd1234".into(),
                previous_version: "00ff00ff".into(),
            })
        }
    }

    fn loopback(token: Option<&str>) -> AdminOptions {
        AdminOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            token: token.map(str::to_owned),
            module_dir: None,
        }
    }

    async fn start(token: Option<&str>) -> (AdminServer, Arc<Recorder>, String) {
        start_with(loopback(token)).await
    }

    async fn start_with(options: AdminOptions) -> (AdminServer, Arc<Recorder>, String) {
        let recorder = Arc::new(Recorder::default());
        let server = AdminServer::start(options, recorder.clone()).await.unwrap();
        let base = format!("http://{}", server.local_addr());
        (server, recorder, base)
    }

    async fn json_of(response: reqwest::Response) -> Value {
        response.json().await.unwrap()
    }

    #[tokio::test]
    async fn health_ready_metrics_and_pipelines() {
        let (server, recorder, base) = start(None).await;
        let client = reqwest::Client::new();

        let health = client.get(format!("{base}/health")).send().await.unwrap();
        assert_eq!(health.status(), 200);
        assert_eq!(health.text().await.unwrap(), "ok");

        let starting = client.get(format!("{base}/ready")).send().await.unwrap();
        assert_eq!(starting.status(), 503);
        assert_eq!(starting.text().await.unwrap(), "starting");
        recorder.ready.store(true, Ordering::SeqCst);
        let ready = client.get(format!("{base}/ready")).send().await.unwrap();
        assert_eq!(ready.status(), 200);
        assert_eq!(ready.text().await.unwrap(), "ready");

        let metrics = client.get(format!("{base}/metrics")).send().await.unwrap();
        assert_eq!(metrics.status(), 200);
        let content_type = metrics.headers()[header::CONTENT_TYPE].to_str().unwrap();
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        assert_eq!(metrics.text().await.unwrap(), recorder.metrics());

        let pipelines = client
            .get(format!("{base}/pipelines"))
            .send()
            .await
            .unwrap();
        assert_eq!(pipelines.status(), 200);
        assert_eq!(
            json_of(pipelines).await,
            json!([{
                "name": "orders",
                "tenant": "acme",
                "state": "running",
                "events_in": 10,
                "events_out": 9,
                "last_checkpoint_epoch": 3,
                "last_checkpoint_age_ms": 1500,
                "error": null,
                "pipes": [{"name": "enrich", "module": "pipes/enrich.wasm", "version": "00ff00ff"}],
            }])
        );

        let missing = client.get(format!("{base}/nope")).send().await.unwrap();
        assert_eq!(missing.status(), 404);
        assert_eq!(
            json_of(missing).await,
            json!({"error": "no route GET /nope"})
        );

        server.stop().await;
        assert!(client.get(format!("{base}/health")).send().await.is_err());
    }

    #[tokio::test]
    async fn checkpoint_and_its_errors() {
        let (server, recorder, base) = start(None).await;
        let client = reqwest::Client::new();

        let done = client
            .post(format!("{base}/pipelines/orders/checkpoint"))
            .header(header::CONTENT_TYPE, "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(done.status(), 200);
        assert_eq!(
            json_of(done).await,
            json!({"pipeline": "orders", "epoch": 4})
        );

        let unknown = client
            .post(format!("{base}/pipelines/ghost/checkpoint"))
            .header(header::CONTENT_TYPE, "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(unknown.status(), 404);
        assert_eq!(
            json_of(unknown).await,
            json!({"error": "no pipeline `ghost`"})
        );

        let stopped = client
            .post(format!("{base}/pipelines/halted/checkpoint"))
            .header(header::CONTENT_TYPE, "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(stopped.status(), 503);
        assert_eq!(
            json_of(stopped).await,
            json!({"error": "pipeline `halted` is stopped"})
        );

        assert_eq!(
            recorder.calls(),
            vec![
                Call::Checkpoint("orders".into()),
                Call::Checkpoint("ghost".into()),
                Call::Checkpoint("halted".into()),
            ]
        );
        server.stop().await;
    }

    #[tokio::test]
    async fn module_upload_as_bytes_or_path() {
        let modules = tempfile::tempdir().unwrap();
        std::fs::create_dir(modules.path().join("pipes")).unwrap();
        let v2 = modules.path().join("pipes/enrich-v2.wasm");
        std::fs::write(&v2, b"v2").unwrap();
        let (server, recorder, base) = start_with(AdminOptions {
            module_dir: Some(modules.path().to_owned()),
            ..loopback(None)
        })
        .await;
        let client = reqwest::Client::new();
        let url = format!("{base}/pipelines/orders/pipes/enrich/module");

        // Every byte value, to catch any re-encoding on the way.
        let component: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
        let swapped = client
            .post(&url)
            .header(header::CONTENT_TYPE, "application/wasm")
            .body(component.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(swapped.status(), 200);
        assert_eq!(
            json_of(swapped).await,
            json!({
                "pipeline": "orders",
                "pipe": "enrich",
                "version": "abcd1234",
                "previous_version": "00ff00ff",
            })
        );

        let by_path = client
            .post(&url)
            .json(&json!({"path": "pipes/enrich-v2.wasm"}))
            .send()
            .await
            .unwrap();
        assert_eq!(by_path.status(), 200);

        // Neither JSON nor WebAssembly: refused before the engine is asked.
        let untyped = client.post(&url).body("abc").send().await.unwrap();
        assert_eq!(untyped.status(), 415);

        assert_eq!(
            recorder.calls(),
            vec![
                Call::Swap(
                    "orders".into(),
                    "enrich".into(),
                    ModuleUpload::Bytes(component)
                ),
                // The engine gets the file's canonical path.
                Call::Swap(
                    "orders".into(),
                    "enrich".into(),
                    ModuleUpload::Path(v2.canonicalize().unwrap())
                ),
            ]
        );
        server.stop().await;
    }

    #[tokio::test]
    async fn module_upload_errors() {
        let modules = tempfile::tempdir().unwrap();
        std::fs::write(modules.path().join("bad.wasm"), b"bad").unwrap();
        let (server, recorder, base) = start_with(AdminOptions {
            module_dir: Some(modules.path().to_owned()),
            ..loopback(None)
        })
        .await;
        let client = reqwest::Client::new();
        let post = |path: &str, content_type: &str, body: &'static [u8]| {
            client
                .post(format!("{base}{path}"))
                .header(header::CONTENT_TYPE, content_type)
                .body(body)
                .send()
        };

        let refused = post(
            "/pipelines/orders/pipes/enrich/module",
            "application/wasm",
            b"not a component",
        )
        .await
        .unwrap();
        assert_eq!(refused.status(), 422);
        assert_eq!(
            json_of(refused).await,
            json!({"error": "module refused: not a pipe component"})
        );

        let refused_path = post(
            "/pipelines/orders/pipes/enrich/module",
            "application/json; charset=utf-8",
            br#"{"path": "bad.wasm"}"#,
        )
        .await
        .unwrap();
        assert_eq!(refused_path.status(), 422);

        let no_pipe = post(
            "/pipelines/orders/pipes/ghost/module",
            "application/wasm",
            b"x",
        )
        .await
        .unwrap();
        assert_eq!(no_pipe.status(), 404);
        assert_eq!(
            json_of(no_pipe).await,
            json!({"error": "pipeline `orders` has no pipe `ghost`"})
        );

        let no_pipeline = post(
            "/pipelines/ghost/pipes/enrich/module",
            "application/wasm",
            b"x",
        )
        .await
        .unwrap();
        assert_eq!(no_pipeline.status(), 404);

        let calls_before_bad_bodies = recorder.calls().len();
        let bad_bodies: [(&str, &'static [u8]); 5] = [
            ("application/json", b"{not json"),
            ("application/json", br#"{"path": "a.wasm", "extra": 1}"#),
            ("application/json", br#"{"path": ""}"#),
            ("application/json", br#"{"module": "a.wasm"}"#),
            ("application/wasm", b""),
        ];
        for (content_type, body) in bad_bodies {
            let bad = post("/pipelines/orders/pipes/enrich/module", content_type, body)
                .await
                .unwrap();
            assert_eq!(bad.status(), 400, "{content_type} {body:?}");
            let error = json_of(bad).await;
            assert!(error["error"].is_string(), "{error}");
        }
        // Bad bodies never reach the engine.
        assert_eq!(recorder.calls().len(), calls_before_bad_bodies);
        server.stop().await;
    }

    #[tokio::test]
    async fn token_guards_mutating_calls_only() {
        let (server, recorder, base) = start(Some("s3cret")).await;
        let client = reqwest::Client::new();
        let checkpoint = format!("{base}/pipelines/orders/checkpoint");
        let unauthorized = json!({"error": "missing or wrong admin token"});

        let missing = client.post(&checkpoint).send().await.unwrap();
        assert_eq!(missing.status(), 401);
        assert_eq!(json_of(missing).await, unauthorized);

        for header_value in [
            "Bearer wrong",
            "Bearer s3cre",
            "Bearer s3crett",
            "Basic s3cret",
            "s3cret",
        ] {
            let wrong = client
                .post(&checkpoint)
                .header(header::AUTHORIZATION, header_value)
                .send()
                .await
                .unwrap();
            assert_eq!(wrong.status(), 401, "{header_value}");
            assert_eq!(json_of(wrong).await, unauthorized);
        }

        // Rejected before the body is read or the engine is asked.
        let upload = client
            .post(format!("{base}/pipelines/orders/pipes/enrich/module"))
            .header(header::CONTENT_TYPE, "application/wasm")
            .body(vec![0u8; 1024])
            .send()
            .await
            .unwrap();
        assert_eq!(upload.status(), 401);
        assert!(recorder.calls().is_empty());

        let accepted = client
            .post(&checkpoint)
            .bearer_auth("s3cret")
            .header(header::CONTENT_TYPE, "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(accepted.status(), 200);
        let lowercase_scheme = client
            .post(&checkpoint)
            .header(header::AUTHORIZATION, "bearer s3cret")
            .header(header::CONTENT_TYPE, "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(lowercase_scheme.status(), 200);
        assert_eq!(recorder.calls().len(), 2);

        for path in ["/health", "/metrics", "/pipelines"] {
            let response = client.get(format!("{base}{path}")).send().await.unwrap();
            assert_eq!(response.status(), 200, "{path}");
        }
        server.stop().await;
    }

    #[tokio::test]
    async fn refuses_open_network_without_token() {
        for listen in ["0.0.0.0:0", "[::]:0", "192.0.2.1:9464"] {
            let options = AdminOptions {
                listen: listen.parse().unwrap(),
                ..AdminOptions::default()
            };
            let error = AdminServer::start(options, Arc::new(Recorder::default()))
                .await
                .unwrap_err();
            assert!(
                matches!(error, AdminServerError::TokenRequired(_)),
                "{listen}: {error}"
            );
            assert!(error.to_string().contains("needs a token"), "{error}");
        }

        let mapped = AdminOptions {
            listen: "[::ffff:127.0.0.1]:0".parse().unwrap(),
            ..AdminOptions::default()
        };
        // Loopback, even when IPv4-mapped: allowed (it may still fail to
        // bind where IPv6 is off, which is not what this checks).
        if let Err(error) = AdminServer::start(mapped, Arc::new(Recorder::default())).await {
            assert!(matches!(error, AdminServerError::Bind { .. }), "{error}");
        }

        let empty = AdminServer::start(loopback(Some("  ")), Arc::new(Recorder::default()))
            .await
            .unwrap_err();
        assert!(matches!(empty, AdminServerError::EmptyToken), "{empty}");
    }

    #[tokio::test]
    async fn bind_failure_names_the_address() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let options = AdminOptions {
            listen: addr,
            ..AdminOptions::default()
        };
        let error = AdminServer::start(options, Arc::new(Recorder::default()))
            .await
            .unwrap_err();
        assert!(matches!(error, AdminServerError::Bind { .. }), "{error}");
        assert!(error.to_string().contains(&addr.to_string()), "{error}");
    }

    #[tokio::test]
    async fn oversized_upload_is_413() {
        let recorder = Arc::new(Recorder::default());
        let server = AdminServer::start_with_limit(loopback(None), recorder.clone(), 64)
            .await
            .unwrap();
        let response = reqwest::Client::new()
            .post(format!(
                "http://{}/pipelines/orders/pipes/enrich/module",
                server.local_addr()
            ))
            .header(header::CONTENT_TYPE, "application/wasm")
            .body(vec![1u8; 1024])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 413);
        assert!(json_of(response).await["error"].is_string());
        assert!(recorder.calls().is_empty());
        server.stop().await;
    }

    #[test]
    fn debug_output_hides_secrets_and_bulk() {
        let options = AdminOptions {
            token: Some("s3cret".into()),
            ..AdminOptions::default()
        };
        let text = format!("{options:?}");
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("127.0.0.1:9464"), "{text}");
        assert_eq!(
            format!("{:?}", ModuleUpload::Bytes(vec![0; 5])),
            "Bytes(5 bytes)"
        );
    }
}
