//! The harness shared by the end-to-end tests (`e2e.rs`) and the attack suite (`attacks.rs`):
//! certificates and model files made once per run, three `sotto serve` processes on loopback
//! joined by TLS (`Deployment`), raw client connections, the plaintext twin, RSS and metrics.
#![allow(dead_code)] // each test binary uses its own part of the harness

use std::io::Read as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use sotto_client::{Client, ClientOptions};
use sotto_core::fixed::decode_with;
use sotto_model::ir::argmax;
use sotto_model::{import::import, plan::Plan};
use sotto_net::Duplex;
use sotto_wire::{ErrorPayload, Frame, Hello, Kind, Manifest, Role, DEFAULT_MAX_PAYLOAD};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

pub const SOTTO: &str = env!("CARGO_BIN_EXE_sotto");

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// One test at a time.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn run_sotto(args: &[&str]) {
    let out = Command::new(SOTTO).args(args).output().expect("sotto runs");
    assert!(
        out.status.success(),
        "sotto {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Certificates, the parties' key and the shared model files, made once per test run.
pub fn material() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let tmp = std::env::temp_dir();
        // Earlier runs' directories (nothing removes a test binary's at its exit): those
        // whose process is gone are removed here.
        if let Ok(entries) = std::fs::read_dir(&tmp) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                let Some(pid) = name.strip_prefix("sotto-e2e-") else {
                    continue;
                };
                let alive = pid
                    .parse::<u32>()
                    .is_ok_and(|p| Path::new(&format!("/proc/{p}")).exists());
                if !alive {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = tmp.join(format!("sotto-e2e-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let d = dir.display().to_string();
        run_sotto(&["certs", "--out", &format!("{d}/certs")]);
        let model = repo().join("models/network_a.onnx").display().to_string();
        run_sotto(&["share-model", &model, "--out", &format!("{d}/net")]);
        dir
    })
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum P {
    P0,
    P1,
    Helper,
}

impl P {
    pub fn name(self) -> &'static str {
        match self {
            P::P0 => "p0",
            P::P1 => "p1",
            P::Helper => "helper",
        }
    }
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Three `sotto serve` processes; killed when dropped.
pub struct Deployment {
    pub ports: [u16; 3],
    /// A further free port per party: `{admin}` in the extra arguments becomes
    /// `127.0.0.1:` and the party's own one.
    pub admin_ports: [u16; 3],
    pub children: [Option<Child>; 3],
    pub extra: Vec<String>,
    pub ca: Vec<u8>,
    pub logs: PathBuf,
}

impl Deployment {
    pub fn start(extra: &[&str]) -> Deployment {
        let m = material();
        let logs = m.join(format!("logs-{}", free_port()));
        std::fs::create_dir_all(&logs).expect("log dir");
        let mut d = Deployment {
            ports: [free_port(), free_port(), free_port()],
            admin_ports: [free_port(), free_port(), free_port()],
            children: [None, None, None],
            extra: extra.iter().map(|s| s.to_string()).collect(),
            ca: std::fs::read(m.join("certs/ca.pem")).expect("ca.pem"),
            logs,
        };
        for p in [P::Helper, P::P1, P::P0] {
            d.spawn(p);
        }
        d
    }

    pub fn url(&self, p: P) -> String {
        format!("wss://localhost:{}", self.ports[p.index()])
    }

    pub fn spawn(&mut self, p: P) {
        let m = material();
        let c = |f: &str| m.join("certs").join(f).display().to_string();
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--role".into(),
            p.name().into(),
            "--listen".into(),
            format!("127.0.0.1:{}", self.ports[p.index()]),
            "--model".into(),
            format!("net={}", m.join("net").display()),
            "--tls-cert".into(),
            c(&format!("{}.pem", p.name())),
            "--tls-key".into(),
            c(&format!("{}.key", p.name())),
            "--tls-ca".into(),
            c("ca.pem"),
            "--key-file".into(),
            c(&format!("{}.keys", p.name())),
        ];
        if p != P::Helper {
            args.extend(["--helper".into(), self.url(P::Helper)]);
        }
        if p == P::P0 {
            args.extend(["--p1".into(), self.url(P::P1)]);
        }
        let admin = format!("127.0.0.1:{}", self.admin_ports[p.index()]);
        args.extend(self.extra.iter().map(|a| a.replace("{admin}", &admin)));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("{}.log", p.name())))
            .expect("log file");
        let child = Command::new(SOTTO)
            .args(&args)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("sotto serve starts");
        self.children[p.index()] = Some(child);
    }

    pub fn kill(&mut self, p: P) {
        if let Some(mut c) = self.children[p.index()].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn pid(&self, p: P) -> u32 {
        self.children[p.index()].as_ref().expect("running").id()
    }

    /// The processes' logs, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for p in [P::P0, P::P1, P::Helper] {
            let mut t = String::new();
            if let Ok(mut f) = std::fs::File::open(self.logs.join(format!("{}.log", p.name()))) {
                let _ = f.read_to_string(&mut t);
            }
            let tail: Vec<&str> = t.lines().rev().take(15).collect();
            s.push_str(&format!("--- {} log (last lines) ---\n", p.name()));
            for l in tail.into_iter().rev() {
                s.push_str(l);
                s.push('\n');
            }
        }
        s
    }

    /// GET `path` on party `p` over HTTPS: (status, body).
    pub async fn get(&self, p: P, path: &str) -> Option<(u16, String)> {
        https_get(self.ports[p.index()], path, &self.ca).await
    }

    pub async fn health(&self, p: P) -> u16 {
        self.get(p, "/health").await.map_or(0, |r| r.0)
    }

    /// Waits until P0 and P1 report ready.
    pub async fn ready(&self, within: Duration) {
        let t = Instant::now();
        loop {
            if self.health(P::P0).await == 200 && self.health(P::P1).await == 200 {
                return;
            }
            assert!(
                t.elapsed() < within,
                "parties not ready within {within:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A metric's value at party `p` (first series whose line starts with `name`).
    pub async fn metric(&self, p: P, name: &str) -> f64 {
        let (_, body) = self.get(p, "/metrics").await.expect("metrics answer");
        let name = format!("sotto_{name}");
        body.lines()
            .find(|l| l.starts_with(&name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in\n{body}"))
    }

    pub async fn client(&self) -> Client {
        let opts = ClientOptions {
            ca_pem: Some(self.ca.clone()),
            ..ClientOptions::default()
        };
        Client::connect(&self.url(P::P0), &self.url(P::P1), opts)
            .await
            .unwrap_or_else(|e| panic!("client connects: {e}\n{}", self.logs()))
    }

    /// A raw WebSocket to a server's client endpoint.
    pub async fn raw(&self, p: P) -> Duplex {
        let cfg = sotto_net::tls::client_config(&self.ca).expect("ca");
        let ws = sotto_net::tls::WsConfig::default()
            .max_message_size(Some(DEFAULT_MAX_PAYLOAD + 64))
            .max_frame_size(Some(DEFAULT_MAX_PAYLOAD + 64));
        sotto_net::tls::connect(&format!("{}/v1/ws", self.url(p)), Some(cfg), ws)
            .await
            .expect("raw connection")
    }

    /// A raw connection that has said hello and read the manifest.
    pub async fn hello(&self, p: P) -> (Duplex, Manifest) {
        let mut l = self.raw(p).await;
        let h = Hello {
            role: Role::Client,
            model_id: String::new(),
            api_key: None,
        };
        l.send_frame(&Frame::json(Kind::Hello, 0, 0, &h).expect("hello"))
            .await
            .expect("send hello");
        let f = l.recv_frame(1 << 20, SECS5).await.expect("manifest");
        (l, f.parse_json(Kind::Manifest).expect("a manifest"))
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        for p in [P::P0, P::P1, P::Helper] {
            self.kill(p);
        }
    }
}

pub const SECS5: Duration = Duration::from_secs(5);

/// A TLS connection to party `port` on loopback, checked against the deployment's CA.
pub async fn tls_to(
    port: u16,
    ca: &[u8],
) -> Option<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    tls_as(port, ca, None).await
}

/// A TLS connection presenting `party`'s certificate from the test material (mutual TLS), or
/// none.
pub async fn tls_as(
    port: u16,
    ca: &[u8],
    party: Option<P>,
) -> Option<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let cfg = match party {
        None => sotto_net::tls::client_config(ca).ok()?,
        Some(p) => {
            let c = material().join("certs");
            let cert = std::fs::read(c.join(format!("{}.pem", p.name()))).ok()?;
            let key = std::fs::read(c.join(format!("{}.key", p.name()))).ok()?;
            sotto_net::tls::party_client_config(ca, &cert, &key).ok()?
        }
    };
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let name = rustls::pki_types::ServerName::try_from("localhost").ok()?;
    tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .ok()
}

pub async fn https_get(port: u16, path: &str, ca: &[u8]) -> Option<(u16, String)> {
    let go = async {
        let mut tls = tls_to(port, ca).await?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        tls.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        let _ = tls.read_to_end(&mut buf).await;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text.split(' ').nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map_or("", |x| x.1).to_string();
        Some((status, body))
    };
    tokio::time::timeout(SECS5, go).await.ok().flatten()
}

/// Status of a WebSocket upgrade request to `/v1/ws` over TLS, with an `Origin` header if
/// given (only the status line is read).
pub async fn upgrade_status(port: u16, origin: Option<&str>, ca: &[u8]) -> Option<u16> {
    let go = async {
        let mut tls = tls_to(port, ca).await?;
        let origin = origin.map_or(String::new(), |o| format!("Origin: {o}\r\n"));
        let req = format!(
            "GET /v1/ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: c290dG8gdGVzdCBrZXkgMQ==\r\n{origin}\r\n"
        );
        tls.write_all(req.as_bytes()).await.ok()?;
        read_status(&mut tls).await
    };
    tokio::time::timeout(SECS5, go).await.ok().flatten()
}

/// Reads an HTTP status line within 5 s: the status code.
pub async fn read_status<S: AsyncRead + Unpin>(s: &mut S) -> Option<u16> {
    let go = async {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n") && buf.len() < 200 {
            s.read_exact(&mut byte).await.ok()?;
            buf.push(byte[0]);
        }
        String::from_utf8_lossy(&buf)
            .split(' ')
            .nth(1)?
            .parse()
            .ok()
    };
    tokio::time::timeout(SECS5, go).await.ok().flatten()
}

/// The held-out MNIST images (values in [0, 1]) and the plaintext twin.
pub struct Data {
    pub images: Vec<f32>,
    pub per: usize,
    pub plan: Plan,
}

pub fn data() -> &'static Data {
    static D: OnceLock<Data> = OnceLock::new();
    D.get_or_init(|| {
        let bytes = std::fs::read(repo().join("models/mnist_test_images.npy")).expect("images");
        let npy = npyz::NpyFile::new(&bytes[..]).expect("npy");
        let images: Vec<f32> = npy
            .into_vec::<u8>()
            .expect("uint8 images")
            .into_iter()
            .map(|v| f32::from(v) / 255.0)
            .collect();
        let onnx = std::fs::read(repo().join("models/network_a.onnx")).expect("model");
        let model = import(&onnx).expect("imports");
        let plan = Plan::new(
            &model,
            sotto_core::fixed::FixedPoint::new(16).expect("fp"),
            1.0,
        )
        .expect("plan");
        Data {
            images,
            per: 784,
            plan,
        }
    })
}

impl Data {
    pub fn x(&self, from: usize, n: usize) -> &[f32] {
        &self.images[from * self.per..(from + n) * self.per]
    }
    /// The plaintext twin's logits for `n` images from `from`.
    pub fn plain(&self, from: usize, n: usize) -> Vec<f64> {
        let enc = self.plan.fp.encode_f32(self.x(from, n)).expect("encode");
        self.plan
            .eval_fixed(&enc, n)
            .expect("plain")
            .into_iter()
            .map(|v| decode_with(v, self.plan.out_frac))
            .collect()
    }
}

/// Checks a private prediction against the plaintext twin: same labels, the same logits bit for
/// bit (every truncation is exact).
pub fn check(logits: &[f64], labels: &[usize], from: usize, n: usize) {
    let want = data().plain(from, n);
    assert_eq!(logits.len(), want.len());
    for (i, (row, wrow)) in logits.chunks(10).zip(want.chunks(10)).enumerate() {
        assert_eq!(labels[i], argmax(wrow), "label of image {}", from + i);
        for (a, b) in row.iter().zip(wrow) {
            assert_eq!(
                a.to_bits(),
                b.to_bits(),
                "image {}: logit {a} vs {b}",
                from + i
            );
        }
    }
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Reads frames until one of `kind` (or the end): the frame, or None when the link closed.
pub async fn next_of(l: &mut Duplex, kind: Kind, within: Duration) -> Option<Frame> {
    let t = Instant::now();
    loop {
        let left = within.checked_sub(t.elapsed())?;
        match l.recv_frame(DEFAULT_MAX_PAYLOAD, left).await {
            Ok(f) if f.kind == kind => return Some(f),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

/// The frame kind of P0's input share and its bytes per input value for the model of `m`:
/// XOR shares of `k`-bit codes (`InputBits`, `⌈k/8⌉` bytes) where the deployment enforces the
/// input range (private weights), additive shares (`InputShare`, 8 bytes) otherwise.
pub fn input_format(m: &Manifest) -> (Kind, usize) {
    match m.input_bits {
        Some(k) => (Kind::InputBits, k.div_ceil(8) as usize),
        None => (Kind::InputShare, 8),
    }
}

/// Sends P0 a client's input share of `values` input values (zero bytes, in the format of
/// `m`'s deployment) as request `step`.
pub async fn send_share(l: &mut Duplex, m: &Manifest, step: u32, values: usize) {
    let (kind, per) = input_format(m);
    let f = Frame {
        kind,
        session: 0,
        step,
        payload: vec![0; values * per],
    };
    l.send_frame(&f).await.expect("send");
}

/// Sends P1 an input seed of `len` zero bytes for `session`.
pub async fn send_seed(l: &mut Duplex, session: u128, len: usize) {
    let f = Frame {
        kind: Kind::InputSeed,
        session,
        step: 0,
        payload: vec![0; len],
    };
    l.send_frame(&f).await.expect("send");
}

pub fn error_code(f: &Frame) -> String {
    f.parse_json::<ErrorPayload>(Kind::Error)
        .expect("an error payload")
        .code
}

/// Sends a signal to a process (`STOP`, `CONT`).
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .expect("kill runs")
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

/// Waits until both servers' pools are full (nothing being dealt), so that memory figures
/// compare like with like (not a helper caught halfway through a refill).
pub async fn settle(d: &Deployment) {
    let t = Instant::now();
    while d.metric(P::P0, "pool_ready_sessions").await < 16.0
        || d.metric(P::P1, "pool_ready_sessions").await < 16.0
    {
        assert!(t.elapsed() < Duration::from_secs(30), "pools do not refill");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
}

pub fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
