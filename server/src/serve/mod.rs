//! `sotto serve --role p0|p1|helper`: one party per process.
//!
//! Topology: P0 dials P1 and the helper, P1 dials the helper (`/v1/party`, authenticated with
//! the pre-shared key, over TLS outside loopback). Clients connect to P0 and P1 at `/v1/ws`.
//! P0 coordinates: it loads each model with P1 and the helper (P0 and P1 open `W − B` once),
//! asks the helper to keep a pool of dealt sessions, and hands each client request a fresh
//! session from the pool. A session's material is used once: P0 takes it out of its pool,
//! P1 out of its own when the client's seed arrives, and a failed session is aborted on both.

pub mod admit;
mod client;
pub mod error;
pub mod http;
pub mod keys;
mod party;
pub use party::{dealing, pool_size, top_up};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::extract::{State as AxState, WebSocketUpgrade};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use sotto_core::transport::PartyId;
use sotto_model::files::{read_file, PartyFile, Role as FileRole};
use sotto_model::private::{HelperLoaded, Loaded};
use sotto_net::auth::{PartyKeys, UpgradeGuard, UPGRADE_HEADER};
use sotto_net::{WsTransport, PARTY_MAX_PAYLOAD};
use sotto_wire::{Manifest, Role, DEFAULT_MAX_PAYLOAD};

use http::Metrics;

/// A model a party serves.
#[derive(Debug)]
pub struct ModelEntry {
    /// Its id (clients name it).
    pub id: String,
    /// This party's file of the set.
    pub file: PartyFile,
}

impl ModelEntry {
    /// What clients are told about the model by this party (`role`), which admits at most
    /// `max_batch` inputs per request.
    pub fn manifest(&self, role: Role, max_batch: usize) -> Manifest {
        let plan = &self.file.plan;
        Manifest {
            model_id: self.id.clone(),
            input_shape: plan.input_shape.clone(),
            frac_bits: plan.fp.frac_bits(),
            output_len: plan.output_len,
            out_frac: plan.out_frac,
            softmax_at_client: plan.softmax_at_client,
            input_bound: plan.input_bound,
            role,
            deployment: self.file.set_id.clone(),
            max_batch,
            input_bits: plan.input_bits(),
        }
    }
}

/// Everything a party needs to run.
#[derive(Debug)]
pub struct ServeConfig {
    /// This party's role.
    pub role: Role,
    /// P1's URL (P0 dials it).
    pub p1: Option<String>,
    /// P1's URL as clients reach it, when it differs from `p1` (told to pages by
    /// `GET /v1/deployment`).
    pub public_p1: Option<String>,
    /// The helper's URL (P0 and P1 dial it).
    pub helper: Option<String>,
    /// Models, the first is the default.
    pub models: Vec<ModelEntry>,
    /// TLS: this party's certificate chain and key (PEM).
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
    /// The CA to trust when dialing `wss://` parties (PEM).
    pub ca: Option<Vec<u8>>,
    /// This party's keys, one per peer it links with.
    pub keys: PartyKeys,
    /// Sessions dealt ahead per (batch size, count).
    pub pool: Vec<(usize, usize)>,
    /// Largest batch a client may ask for.
    pub max_batch: usize,
    /// How long a party waits for another inside a session.
    pub timeout: Duration,
    /// Bytes of helper material the requests in flight may hold at this party (see
    /// [`admit`]).
    pub inflight_budget: u64,
    /// A client connection with nothing in flight closes after this long without a frame.
    pub idle_timeout: Duration,
    /// Most open connections (clients, parties, HTTP), counted from the TCP accept.
    pub max_connections: usize,
    /// Static files served at `/` (the demo page).
    pub web: Option<PathBuf>,
    /// Web origins allowed to open client connections (empty: any); requests without an
    /// Origin header (non-browser clients) are always allowed.
    pub allowed_origins: Vec<String>,
    /// A separate plain-HTTP listener for `/health` (with detail) and `/metrics`
    /// (`--admin-listen`, loopback or a private network); the public listener then answers
    /// `/health` with readiness only and serves no `/metrics`.
    pub admin: Option<std::net::SocketAddr>,
    /// Client API keys (`--client-keys`): when set, a client's hello must carry one of them.
    pub client_keys: Option<Arc<keys::ClientKeys>>,
    /// Print a line per prediction.
    pub verbose: bool,
}

/// Shared state of a running party.
pub struct State {
    /// The configuration.
    pub cfg: ServeConfig,
    /// This party.
    pub me: PartyId,
    /// The party links.
    pub mesh: Arc<WsTransport>,
    /// Metrics.
    pub metrics: Metrics,
    /// Servers: the loaded models (with the load session id), by model id.
    pub loaded: RwLock<HashMap<String, (u128, Arc<Loaded>)>>,
    /// Helper: the loaded models' masks (with the load session id).
    pub helper_loaded: RwLock<HashMap<String, (u128, Arc<HelperLoaded>)>>,
    /// Bytes sent to clients.
    pub client_sent: std::sync::atomic::AtomicU64,
    /// Sessions the helper announced as dealt (P0 and P1 count them).
    pub dealt: std::sync::atomic::AtomicU64,
    pub(crate) pools: Mutex<party::Pools>,
    pub(crate) pool_changed: tokio::sync::Notify,
    /// P1 and the helper: the load session of each model being loaded now.
    pub(crate) loading: Mutex<HashMap<String, u128>>,
    /// P0 and P1: pooled sessions whose input-independent part is done.
    pub(crate) prepared: Mutex<HashMap<u128, client::PreparedSession>>,
    pub(crate) status: Mutex<String>,
    /// Checks the upgrade tokens of parties dialing `/v1/party`.
    pub(crate) upgrades: UpgradeGuard,
    /// The listener's connection slots (set when serving starts).
    pub(crate) conn_slots: std::sync::OnceLock<Arc<tokio::sync::Semaphore>>,
    /// Admission control of client requests.
    pub(crate) admission: Arc<admit::Admission>,
    /// Rate limits of log lines an outsider can cause, by category.
    pub(crate) log_budget: Mutex<HashMap<&'static str, LogWindow>>,
}

/// Log lines of one category in the current window.
#[derive(Debug)]
pub(crate) struct LogWindow {
    start: std::time::Instant,
    printed: u32,
    suppressed: u64,
}

/// Lines per category and window that [`State::log_limited`] prints.
const LOG_LINES: u32 = 10;
/// The window of [`State::log_limited`].
const LOG_WINDOW: Duration = Duration::from_secs(10);

/// The smallest window of a streamed session (bytes).
const MIN_STREAM_WINDOW: u64 = 64 << 10;

/// How a session is dealt and what it weighs ([`State::footprint`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    /// Bytes of material (per server) it may make a server hold at once.
    pub bytes: u64,
    /// Streamed, with this window; `None`: dealt whole.
    pub window: Option<u64>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "State({:?})", self.me)
    }
}

impl State {
    /// What this party tells clients about `m`: its batch limit is the smaller of
    /// `--max-batch` and what one request may reserve of the admission budget.
    pub fn manifest(&self, m: &ModelEntry) -> Manifest {
        m.manifest(self.cfg.role, self.max_batch(m).max(1))
    }

    /// How a session of `batch` inputs of `m` is dealt here and what it weighs against the
    /// admission budget: whole (all its material) when that fits one request's share of
    /// the budget, else streamed, weighing its window plus its heaviest step.
    pub fn footprint(&self, m: &ModelEntry, batch: usize) -> Footprint {
        let (plan, private) = (&m.file.plan, m.file.private);
        let whole = plan
            .material_per_input(private)
            .saturating_mul(batch as u64);
        if whole <= self.admission.per_request_kib() * 1024 {
            return Footprint {
                bytes: whole,
                window: None,
            };
        }
        let window = self.stream_window();
        Footprint {
            bytes: window
                + plan
                    .largest_step_material(private)
                    .saturating_mul(batch as u64),
            window: Some(window),
        }
    }

    /// The window of streamed sessions: an eighth of `--inflight-budget-mb`, at least
    /// [`MIN_STREAM_WINDOW`].
    fn stream_window(&self) -> u64 {
        (self.cfg.inflight_budget / 8).max(MIN_STREAM_WINDOW)
    }

    /// The smallest `--inflight-budget-mb` under which one input of `m` can run (streamed:
    /// half the budget must hold the window, an eighth of it, plus the heaviest step).
    pub fn budget_needed_mb(&self, m: &ModelEntry) -> u64 {
        let step = m.file.plan.largest_step_material(m.file.private);
        (step * 8 / 3 + 1)
            .max(2 * (step + MIN_STREAM_WINDOW))
            .div_ceil(1 << 20)
    }

    /// The largest batch of `m` one request may carry (0: not even one input fits).
    pub fn max_batch(&self, m: &ModelEntry) -> usize {
        let (plan, private) = (&m.file.plan, m.file.private);
        let limit = self.admission.per_request_kib() * 1024;
        let whole = limit / plan.material_per_input(private).max(1);
        let streamed =
            limit.saturating_sub(self.stream_window()) / plan.largest_step_material(private).max(1);
        (whole.max(streamed) as usize).min(self.cfg.max_batch)
    }

    /// What an operator should know about the models whose sessions are streamed: their
    /// window, their heaviest step, and whether the budget or the party timeout is too small
    /// for them.
    pub fn streaming_notes(&self) -> Vec<String> {
        let mib = |b: u64| b.div_ceil(1 << 20);
        let mut notes = Vec::new();
        for m in &self.cfg.models {
            let f = self.footprint(m, 1);
            let Some(window) = f.window else {
                continue;
            };
            let step = m.file.plan.largest_step_material(m.file.private);
            notes.push(format!(
                "model {}: {} MiB of helper material per input and server, more than one request may hold (half of --inflight-budget-mb {}): its sessions are streamed ({} MiB window, heaviest step {} MiB)",
                m.id,
                mib(m.file.plan.material_per_input(m.file.private)),
                self.cfg.inflight_budget >> 20,
                mib(window),
                mib(step)
            ));
            if self.max_batch(m) == 0 {
                notes.push(format!(
                    "model {}: even one input does not fit: give --inflight-budget-mb {} or more",
                    m.id,
                    self.budget_needed_mb(m)
                ));
            }
            // A step is dealt (and run) between two messages: at a conservative 50 MB/s of
            // dealing, its heaviest step must fit the party timeout on every party.
            let secs = step / 50_000_000 + 5;
            if Duration::from_secs(secs) > self.cfg.timeout {
                notes.push(format!(
                    "model {}: dealing its heaviest step may take longer than the party timeout ({} ms): give all three parties --timeout-ms {} or more",
                    m.id,
                    self.cfg.timeout.as_millis(),
                    secs * 2000
                ));
            }
        }
        notes
    }

    /// The model `id` (the default for an empty id).
    pub fn model(&self, id: &str) -> Option<&ModelEntry> {
        if id.is_empty() {
            return self.cfg.models.first();
        }
        self.cfg.models.iter().find(|m| m.id == id)
    }

    /// Sets (and logs) the status line.
    pub fn set_status(&self, s: impl Into<String>) {
        let s = s.into();
        let mut st = self.status.lock().unwrap_or_else(|e| e.into_inner());
        if *st != s {
            eprintln!("[{:?}] {s}", self.me);
            *st = s;
        }
    }

    /// Logs a line of `category` unless that category already printed [`LOG_LINES`] lines
    /// in the last [`LOG_WINDOW`] (what an outsider can trigger must not flood the log); the
    /// next window starts with a count of the lines left out.
    pub fn log_limited(&self, category: &'static str, line: impl FnOnce() -> String) {
        let now = std::time::Instant::now();
        let mut b = self.log_budget.lock().unwrap_or_else(|e| e.into_inner());
        let w = b.entry(category).or_insert(LogWindow {
            start: now,
            printed: 0,
            suppressed: 0,
        });
        if now.duration_since(w.start) >= LOG_WINDOW {
            if w.suppressed > 0 {
                eprintln!(
                    "[{:?}] {} more {category} lines left out in the last {:?}",
                    self.me, w.suppressed, LOG_WINDOW
                );
            }
            *w = LogWindow {
                start: now,
                printed: 0,
                suppressed: 0,
            };
        }
        if w.printed < LOG_LINES {
            w.printed += 1;
            drop(b);
            eprintln!("[{:?}] {}", self.me, line());
        } else {
            w.suppressed += 1;
        }
    }

    /// The status line.
    pub fn status(&self) -> String {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// True when this party can serve predictions now.
    pub fn ready(&self) -> bool {
        match self.me {
            PartyId::Helper => true,
            _ => {
                let loaded = self.loaded.read().unwrap_or_else(|e| e.into_inner());
                !self.cfg.models.is_empty()
                    && self.cfg.models.iter().all(|m| loaded.contains_key(&m.id))
                    && self.mesh.is_up(self.me.peer().unwrap_or(PartyId::P1))
                    && self.mesh.is_up(PartyId::Helper)
            }
        }
    }
}

/// Reads this party's file of each model set: `DIR/p0.sotto` (or p1, helper) for every
/// `id=DIR` (or `DIR`, whose name becomes the id).
pub fn load_models(role: Role, specs: &[String]) -> Result<Vec<ModelEntry>, String> {
    let file_role = match role {
        Role::P0 => FileRole::P0,
        Role::P1 => FileRole::P1,
        Role::Helper => FileRole::Helper,
        Role::Client => return Err("a client serves no model".into()),
    };
    let mut out: Vec<ModelEntry> = Vec::new();
    for spec in specs {
        let (id, dir) = match spec.split_once('=') {
            Some((id, dir)) => (id.to_string(), PathBuf::from(dir)),
            None => {
                let dir = PathBuf::from(spec);
                let id = dir
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("model")
                    .to_string();
                (id, dir)
            }
        };
        if id.is_empty()
            || id.len() > 64
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(format!(
                "model id {id:?}: use 1 to 64 letters, digits, '-', '_' or '.'"
            ));
        }
        if out.iter().any(|m| m.id == id) {
            return Err(format!("model id {id:?} given twice"));
        }
        let path = dir.join(file_role.file_name());
        let bytes = std::fs::read(&path).map_err(|e| {
            format!(
                "{}: {e} (make the files with `sotto share-model MODEL.onnx --out {}`)",
                path.display(),
                dir.display()
            )
        })?;
        let file = read_file(&bytes, file_role).map_err(|e| format!("{}: {e}", path.display()))?;
        out.push(ModelEntry { id, file });
    }
    if out.is_empty() {
        return Err("no model: give --model DIR (made by `sotto share-model`)".into());
    }
    Ok(out)
}

/// Settings from a TOML file; flags override them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Role.
    pub role: Option<String>,
    /// Listen address.
    pub listen: Option<String>,
    /// P1's URL.
    pub p1: Option<String>,
    /// P1's URL as clients reach it.
    pub public_p1: Option<String>,
    /// The helper's URL.
    pub helper: Option<String>,
    /// Model directories (`id=DIR` or `DIR`).
    #[serde(default)]
    pub models: Vec<String>,
    /// Certificate chain (PEM file).
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM file).
    pub tls_key: Option<PathBuf>,
    /// CA certificate (PEM file).
    pub tls_ca: Option<PathBuf>,
    /// File holding the pre-shared key (64 hex digits).
    pub key_file: Option<PathBuf>,
    /// Run without TLS on a non-loopback address.
    pub insecure_no_tls: Option<bool>,
    /// Pool sizes, `BATCH:COUNT` items.
    pub pool: Option<String>,
    /// Largest batch.
    pub max_batch: Option<usize>,
    /// Party timeout in milliseconds.
    pub timeout_ms: Option<u64>,
    /// MiB of helper material requests in flight may hold.
    pub inflight_budget_mb: Option<u64>,
    /// Idle client connections close after this many ms.
    pub idle_timeout_ms: Option<u64>,
    /// Most open connections.
    pub max_connections: Option<usize>,
    /// Static files at `/`.
    pub web: Option<PathBuf>,
    /// Web origins allowed to open client connections (empty: any).
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Client API keys file.
    pub client_keys: Option<PathBuf>,
    /// Admin listener address.
    pub admin_listen: Option<String>,
}

impl FileConfig {
    /// Reads a TOML config file.
    pub fn read(path: &Path) -> Result<FileConfig, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Parses `1:16,100:2` (batch:count pairs).
pub fn parse_pool(s: &str) -> Result<Vec<(usize, usize)>, String> {
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (b, c) = item
            .split_once(':')
            .ok_or_else(|| format!("pool item {item:?}: write BATCH:COUNT, e.g. 1:16"))?;
        let b: usize = b
            .trim()
            .parse()
            .map_err(|_| format!("pool item {item:?}: bad batch"))?;
        let c: usize = c
            .trim()
            .parse()
            .map_err(|_| format!("pool item {item:?}: bad count"))?;
        if b == 0 || c > 4096 {
            return Err(format!("pool item {item:?}: batch ≥ 1 and count ≤ 4096"));
        }
        out.push((b, c));
    }
    Ok(out)
}

/// Refuses a configuration that would send shares in clear over a network.
pub fn check_tls(
    listen: &SocketAddr,
    urls: &[&Option<String>],
    tls: bool,
    insecure: bool,
) -> Result<(), String> {
    if insecure {
        return Ok(());
    }
    if !listen.ip().is_loopback() && !tls {
        return Err(format!(
            "refusing to listen on {listen} without TLS: give --tls-cert and --tls-key (see `sotto certs`), or --insecure-no-tls if another layer encrypts the links"
        ));
    }
    for u in urls.iter().filter_map(|u| u.as_deref()) {
        if !u.starts_with("wss://") && !is_loopback_ws(u) {
            return Err(format!(
                "refusing to dial {u} without TLS: use a wss:// URL (with --tls-ca), or --insecure-no-tls"
            ));
        }
    }
    Ok(())
}

/// True for a `ws://` URL whose host is exactly `localhost` or a loopback IP address, parsed
/// as a URL (not a string prefix: `ws://localhost@evil.test`, `ws://127.0.0.1.evil.test` and
/// `ws://localhost.example.com` are not loopback).
pub fn is_loopback_ws(url: &str) -> bool {
    let Ok(uri) = url.parse::<axum::http::Uri>() else {
        return false;
    };
    let Some(auth) = uri.authority() else {
        return false;
    };
    if uri.scheme_str() != Some("ws") || auth.as_str().contains('@') {
        return false;
    }
    let host = auth.host().trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A bound listener: plain TCP or TLS, and its connection slots.
pub enum Bound {
    /// Plain TCP.
    Plain(http::PlainListener, Arc<tokio::sync::Semaphore>),
    /// TLS.
    Tls(http::TlsListener, Arc<tokio::sync::Semaphore>),
}

impl std::fmt::Debug for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bound")
    }
}

impl Bound {
    /// The address it listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Bound::Plain(l, _) => axum::serve::Listener::local_addr(l),
            Bound::Tls(l, _) => axum::serve::Listener::local_addr(l),
        }
    }
}

/// Binds the listener (TLS when configured), taking at most `max_connections` connections at
/// once (a connection over the cap is closed as soon as it is accepted).
pub async fn bind(
    listen: SocketAddr,
    tls: &Option<(Vec<u8>, Vec<u8>)>,
    party_ca: Option<&[u8]>,
    max_connections: usize,
) -> Result<Bound, String> {
    let tcp = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    Ok(match tls {
        None => Bound::Plain(http::PlainListener::new(tcp, slots.clone()), slots),
        Some((cert, key)) => {
            let cfg =
                sotto_net::tls::server_config(cert, key, party_ca).map_err(|e| e.to_string())?;
            Bound::Tls(
                http::TlsListener::new(tcp, cfg, slots.clone()).map_err(|e| e.to_string())?,
                slots,
            )
        }
    })
}

/// Runs a party on `bound` until the process ends.
pub async fn run(cfg: ServeConfig, bound: Bound) -> Result<(), String> {
    let state = prepare(cfg)?;
    run_state(state, bound).await
}

/// A party's state, with its background work (dialing, loads, pools) started.
pub fn prepare(cfg: ServeConfig) -> Result<Arc<State>, String> {
    let me = match cfg.role {
        Role::P0 => PartyId::P0,
        Role::P1 => PartyId::P1,
        Role::Helper => PartyId::Helper,
        Role::Client => return Err("--role is p0, p1 or helper".into()),
    };
    let (mesh, control) = WsTransport::with_control(me, cfg.timeout);
    let state = Arc::new(State {
        me,
        mesh: Arc::new(mesh),
        metrics: Metrics::new(),
        loaded: RwLock::new(HashMap::new()),
        helper_loaded: RwLock::new(HashMap::new()),
        client_sent: Default::default(),
        dealt: Default::default(),
        pools: Mutex::new(party::Pools::default()),
        pool_changed: tokio::sync::Notify::new(),
        loading: Mutex::new(HashMap::new()),
        prepared: Mutex::new(HashMap::new()),
        status: Mutex::new(String::new()),
        upgrades: UpgradeGuard::default(),
        log_budget: Mutex::new(HashMap::new()),
        admission: Arc::new(admit::Admission::new(cfg.inflight_budget)),
        conn_slots: std::sync::OnceLock::new(),
        cfg,
    });
    party::start(state.clone(), control)?;
    for line in state.streaming_notes() {
        eprintln!("{line}");
    }
    Ok(state)
}

/// Serves a prepared party's HTTP and WebSocket endpoints on `bound`.
pub async fn run_state(state: Arc<State>, bound: Bound) -> Result<(), String> {
    let me = state.me;
    let mut app = Router::new();
    match state.cfg.admin {
        None => {
            app = app
                .route("/health", get(health))
                .route("/metrics", get(metrics));
        }
        Some(admin) => {
            app = app.route("/health", get(health_public));
            let tcp = tokio::net::TcpListener::bind(admin)
                .await
                .map_err(|e| format!("cannot listen on {admin} (--admin-listen): {e}"))?;
            let listener = http::PlainListener::new(tcp, Arc::new(tokio::sync::Semaphore::new(16)));
            let admin_app = Router::new()
                .route("/health", get(health))
                .route("/metrics", get(metrics))
                .with_state(state.clone());
            eprintln!("admin endpoints (/health, /metrics) on http://{admin}");
            tokio::spawn(async move {
                if let Err(e) = axum::serve(
                    listener,
                    admin_app.into_make_service_with_connect_info::<http::Channel>(),
                )
                .await
                {
                    eprintln!("admin listener stopped: {e}");
                }
            });
        }
    }
    app = app
        .route("/v1/models", get(models))
        .route("/v1/deployment", get(deployment));
    // P0 dials the others and takes no party connection at all.
    if me != PartyId::P0 {
        app = app.route("/v1/party", get(party_ws));
    }
    if me != PartyId::Helper {
        app = app.route("/v1/ws", get(client_ws));
    }
    if state.cfg.web.is_some() {
        app = app
            .route("/", get(web_root))
            .route("/{*path}", get(web_file));
    }
    let app = app.with_state(state.clone());
    let addr = bound.local_addr().map_err(|e| e.to_string())?;
    state.set_status(format!("listening on {addr}"));
    let res = match bound {
        Bound::Plain(l, slots) => {
            let _ = state.conn_slots.set(slots);
            axum::serve(
                l,
                app.into_make_service_with_connect_info::<http::Channel>(),
            )
            .await
        }
        Bound::Tls(l, slots) => {
            let _ = state.conn_slots.set(slots);
            axum::serve(
                l,
                app.into_make_service_with_connect_info::<http::Channel>(),
            )
            .await
        }
    };
    res.map_err(|e| e.to_string())
}

async fn health(AxState(st): AxState<Arc<State>>) -> Response {
    let ready = st.ready();
    let body = serde_json::json!({
        "role": format!("{:?}", st.me),
        "ready": ready,
        "status": st.status(),
        "models": st.cfg.models.iter().map(|m| m.id.clone()).collect::<Vec<_>>(),
    });
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// `/health` on the public listener when an admin listener exists: readiness only.
async fn health_public(AxState(st): AxState<Arc<State>>) -> Response {
    let ready = st.ready();
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({ "ready": ready }).to_string(),
    )
        .into_response()
}

async fn metrics(AxState(st): AxState<Arc<State>>) -> Response {
    for p in PartyId::ALL
        .into_iter()
        .filter(|p| *p != st.me && *p != PartyId::Client)
    {
        let (sent, recv) = st.mesh.bytes(p);
        for (dir, v) in [("sent", sent), ("received", recv)] {
            st.metrics
                .link_bytes
                .get_or_create(&vec![
                    ("peer".to_string(), format!("{p:?}")),
                    ("direction".to_string(), dir.to_string()),
                ])
                .set(v as i64);
        }
    }
    st.metrics
        .queued_sessions
        .set(st.mesh.queued_sessions() as i64);
    st.metrics.pool_ready.set(party::pool_size(&st) as i64);
    st.metrics
        .inflight_kib
        .set(st.admission.in_flight_kib() as i64);
    if let Some(s) = st.conn_slots.get() {
        st.metrics
            .connections
            .set(st.cfg.max_connections.saturating_sub(s.available_permits()) as i64);
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        st.metrics.render(),
    )
        .into_response()
}

async fn models(AxState(st): AxState<Arc<State>>) -> Response {
    // The helper serves no client, and its files hold only what dealing needs (no input
    // shape or bound): it lists nothing.
    let list: Vec<Manifest> = if st.me == PartyId::Helper {
        Vec::new()
    } else {
        st.cfg.models.iter().map(|m| st.manifest(m)).collect()
    };
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        ],
        serde_json::to_string(&list).unwrap_or_else(|_| "[]".into()),
    )
        .into_response()
}

/// What a page needs to reach the other server: P1's client URL (P0 answers it; P1 and the
/// helper answer `null`).
async fn deployment(AxState(st): AxState<Arc<State>>) -> Response {
    let p1 = st.cfg.public_p1.clone().or_else(|| st.cfg.p1.clone());
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        ],
        serde_json::json!({ "role": format!("{:?}", st.me), "p1": p1 }).to_string(),
    )
        .into_response()
}

/// `/v1/party`: the upgrade request must carry a valid token of a peer party (checked before
/// any WebSocket exists, so an outsider cannot make this party buffer a large message).
async fn party_ws(
    AxState(st): AxState<Arc<State>>,
    axum::extract::ConnectInfo(channel): axum::extract::ConnectInfo<http::Channel>,
    headers: axum::http::HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let token = headers
        .get(UPGRADE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let dialer = match st.upgrades.check(&st.cfg.keys, token) {
        Ok(r) => r,
        Err(e) => {
            st.metrics.error("party_auth");
            st.log_limited("party_auth", || format!("refused a party upgrade: {e}"));
            return (StatusCode::UNAUTHORIZED, e.to_string()).into_response();
        }
    };
    // Over TLS the dialer's certificate must state the role its token claims (mutual TLS).
    if channel.binding.is_some() && channel.peer != Some(dialer) {
        st.metrics.error("party_auth");
        let why = match channel.peer {
            None => format!(
                "a {dialer:?} must present its party certificate (mutual TLS; certificates from `sotto certs` name their role as {})",
                sotto_net::tls::role_dns_name(dialer)
            ),
            Some(r) => format!("the token says {dialer:?} but the certificate says {r:?}"),
        };
        st.log_limited("party_auth", || format!("refused a party upgrade: {why}"));
        return (StatusCode::UNAUTHORIZED, why).into_response();
    }
    ws.max_message_size(PARTY_MAX_PAYLOAD + 64)
        .max_frame_size(PARTY_MAX_PAYLOAD + 64)
        .on_upgrade(move |sock| {
            party::accept(
                st,
                http::duplex(sock),
                dialer,
                channel.binding,
                channel.kind,
            )
        })
}

async fn client_ws(
    AxState(st): AxState<Arc<State>>,
    headers: axum::http::HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let allowed = &st.cfg.allowed_origins;
        if !allowed.is_empty() && !allowed.iter().any(|a| a == origin) {
            st.metrics.error("origin_refused");
            return (
                StatusCode::FORBIDDEN,
                format!("pages from {origin:?} may not use this deployment (--allowed-origin)"),
            )
                .into_response();
        }
    }
    // The largest message a client needs is a full batch of input shares; up to twice that
    // is read, so that a batch just over --max-batch gets a `bad_shape` answer on a
    // connection that stays open, and anything larger closes the connection.
    let largest = st
        .cfg
        .models
        .iter()
        .map(|m| {
            let plan = &m.file.plan;
            // Bytes per input value: shares of k-bit codes and wrap bits, or 8-byte shares.
            let per = plan.input_bits().map_or(8, sotto_core::share::bits_width);
            plan.input_len
                .saturating_mul(2 * per)
                .saturating_mul(st.cfg.max_batch)
        })
        .max()
        .unwrap_or(0)
        .clamp(4096, DEFAULT_MAX_PAYLOAD)
        + sotto_wire::HEADER_LEN;
    ws.max_message_size(largest)
        .max_frame_size(largest)
        // Every read fills this buffer's spare room (zeros first), and it is kept for the
        // connection's life: the library's 128 KiB made each client connection hold about
        // 100 KiB. Clients send one input message per request; larger ones take more reads.
        .read_buffer_size(CLIENT_READ_BUFFER)
        // What a client that does not read (pongs to its pings, results) can make us queue.
        .max_write_buffer_size(CLIENT_WRITE_BUFFER)
        .on_upgrade(move |sock| client::handle(st, http::duplex(sock)))
}

/// Bytes a client connection's reader takes from the socket at a time (see `client_ws`).
const CLIENT_READ_BUFFER: usize = 16 << 10;

/// Most bytes queued for a client's socket (the rest of the flow control is the bounded queue
/// of frames in `client`).
const CLIENT_WRITE_BUFFER: usize = 4 << 20;

async fn web_root(AxState(st): AxState<Arc<State>>) -> Response {
    web_serve(&st, "").await
}

async fn web_file(
    AxState(st): AxState<Arc<State>>,
    axum::extract::Path(path): axum::extract::Path<String>,
) -> Response {
    web_serve(&st, &path).await
}

async fn web_serve(st: &State, path: &str) -> Response {
    match &st.cfg.web {
        Some(root) => http::static_file(root, path).await,
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_real_loopback_urls_may_be_plain() {
        for ok in [
            "ws://127.0.0.1:8101",
            "ws://localhost:8101",
            "ws://LOCALHOST",
            "ws://[::1]:8102/",
            "ws://127.8.9.10:1",
        ] {
            assert!(is_loopback_ws(ok), "{ok}");
        }
        for bad in [
            "ws://localhost@evil.test",
            "ws://localhost:1@evil.test:2",
            "ws://127.0.0.1.evil.test",
            "ws://localhost.example.com",
            "ws://10.0.0.1:8101",
            "ws://[::2]:8101",
            "wss://127.0.0.1:8101",
            "http://127.0.0.1:8101",
            "ws://",
            "not a url",
        ] {
            assert!(!is_loopback_ws(bad), "{bad}");
        }
        let listen: SocketAddr = "127.0.0.1:8100".parse().expect("addr");
        let evil = Some("ws://localhost@evil.test:8101".to_string());
        let e = check_tls(&listen, &[&evil], false, false).expect_err("refused");
        assert!(e.contains("without TLS"), "{e}");
        let tls = Some("wss://p1.example:8101".to_string());
        let local = Some("ws://127.0.0.1:8101".to_string());
        assert!(check_tls(&listen, &[&tls, &local], false, false).is_ok());
    }
}
