//! `sotto serve`, `certs`, `predict`, `demo` and `bench`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sotto_client::{Client, ClientOptions};
use sotto_net::auth::{role_name, PartyKeys, MAX_KEY_FILE};
use sotto_wire::Role;

use crate::serve::{self, FileConfig, ServeConfig};

/// Flags of `sotto serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// A TOML file with any of the settings below (flags win), e.g. `role = "p0"`,
    /// `listen = "0.0.0.0:8100"`, `models = ["models/a"]`, `key_file = "p0.keys"`.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Which party this process is: p0, p1 or helper.
    #[arg(long)]
    pub role: Option<String>,
    /// Address to listen on [default: 127.0.0.1:8100 for p0, :8101 for p1, :8102 for helper].
    #[arg(long)]
    pub listen: Option<String>,
    /// P1's base URL (P0 dials it), e.g. wss://p1.example.com:8101.
    #[arg(long)]
    pub p1: Option<String>,
    /// P1's URL as browsers and apps reach it, if not the --p1 URL (P0 tells pages at
    /// `GET /v1/deployment`).
    #[arg(long)]
    pub public_p1: Option<String>,
    /// The helper's base URL (P0 and P1 dial it), e.g. wss://helper.example.com:8102.
    #[arg(long)]
    pub helper: Option<String>,
    /// A model directory made by `sotto share-model` (this party reads its own file there);
    /// `ID=DIR` names the model, else the directory's name is its id. Repeat for more models;
    /// the first is the default.
    #[arg(long = "model")]
    pub models: Vec<String>,
    /// This party's TLS certificate chain (PEM), e.g. from `sotto certs`.
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// This party's TLS private key (PEM).
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// The CA certificate (PEM) the other parties' certificates are checked against.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// This party's key file: one key per peer (`sotto certs` writes p0.keys, p1.keys,
    /// helper.keys).
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// Allow plain-text links on non-loopback addresses (only behind another encrypted layer).
    #[arg(long)]
    pub insecure_no_tls: bool,
    /// Sessions of helper material P0 keeps ready, as BATCH:COUNT items [default: 1:16].
    #[arg(long)]
    pub pool: Option<String>,
    /// Largest batch a client may send [default: 128].
    #[arg(long)]
    pub max_batch: Option<usize>,
    /// How long a party waits for another inside a session, in ms [default: 5000].
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// MiB of helper material the client requests in flight may hold at this party; one
    /// request and one connection may take half [default: 96; the party's memory grows by
    /// about 1.5 times this under a flood].
    #[arg(long)]
    pub inflight_budget_mb: Option<u64>,
    /// A client connection with nothing in flight is closed after this many ms without a
    /// frame [default: 60000].
    #[arg(long)]
    pub idle_timeout_ms: Option<u64>,
    /// Most open connections (clients, parties, HTTP) [default: 512].
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// A directory of static files served at `/` (P0 and P1), e.g. the demo page.
    #[arg(long)]
    pub web: Option<PathBuf>,
    /// Only web pages from this origin may open client connections (repeat for more, e.g.
    /// https://app.example.com); clients that send no Origin header (apps, `sotto predict`)
    /// are always accepted. Default: any origin.
    #[arg(long = "allowed-origin")]
    pub allowed_origins: Vec<String>,
    /// Serve `/health` (with detail) and `/metrics` on this separate plain-HTTP address
    /// (loopback or a private network, e.g. 127.0.0.1:9100); the public listener then answers
    /// `/health` with readiness only and has no `/metrics`.
    #[arg(long)]
    pub admin_listen: Option<String>,
    /// Only clients presenting one of these API keys may connect: a file of
    /// `NAME sha256:HEX [REQUESTS_PER_SECOND]` lines (`sotto client-key` writes them). Give
    /// P0 and P1 the same file.
    #[arg(long)]
    pub client_keys: Option<PathBuf>,
    /// Log a line per prediction (sizes and times only; never shares).
    #[arg(long)]
    pub verbose: bool,
}

/// Default of `--inflight-budget-mb`.
pub const DEFAULT_BUDGET_MB: u64 = 96;
/// Default of `--max-connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{what} {}: {e}", path.display()))
}

/// Reads at most `max` bytes of `path` (a key file given as `/dev/zero` must not fill memory).
fn read_bounded(path: &Path, what: &str, max: usize) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    let mut buf = Vec::new();
    f.take(max as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if buf.len() > max {
        return Err(format!(
            "{what} {}: longer than {max} bytes, not a key file",
            path.display()
        ));
    }
    Ok(buf)
}

/// Warns when a secret file is readable by other users.
fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::metadata(path) {
            if m.permissions().mode() & 0o077 != 0 {
                eprintln!(
                    "warning: {} is readable by other users (mode {:o}); `chmod 600` it",
                    path.display(),
                    m.permissions().mode() & 0o777
                );
            }
        }
    }
}

/// Writes a secret file readable by its owner only (0600 on Unix).
pub(crate) fn write_secret(path: &Path, data: &[u8]) -> Result<(), String> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let mut f = o
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // An existing file keeps its mode through open(): set it.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    f.write_all(data)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// `sotto client-key`: a new key printed once, its digest line appended to `file`.
pub fn client_key(name: &str, rate: Option<f64>, file: &Path) -> Result<(), String> {
    let (key, line) = serve::keys::new_key(name, rate).map_err(|e| e.to_string())?;
    let old = match std::fs::metadata(file) {
        Ok(_) => read_bounded(file, "client keys file", serve::keys::MAX_FILE)?,
        Err(_) => Vec::new(),
    };
    let mut text = String::from_utf8_lossy(&old).into_owned();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&line);
    text.push('\n');
    // The whole file must still parse (a name used twice is refused here, not at serve).
    serve::keys::ClientKeys::parse(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    write_secret(file, text.as_bytes())?;
    eprintln!(
        "added key {name:?} to {} ({} requests/s); the key, shown only now:",
        file.display(),
        rate.map_or("unlimited".to_string(), |r| r.to_string())
    );
    println!("{key}");
    Ok(())
}

/// A private-network address (RFC 1918, or IPv6 unique local): where an admin listener may be.
fn private_address(a: &SocketAddr) -> bool {
    match a.ip() {
        std::net::IpAddr::V4(v) => v.is_private(),
        std::net::IpAddr::V6(v) => (v.segments()[0] & 0xfe00) == 0xfc00,
    }
}

/// Builds the configuration from the file and the flags.
pub fn serve_config(a: ServeArgs) -> Result<(ServeConfig, SocketAddr), String> {
    let f = match &a.config {
        Some(p) => FileConfig::read(p)?,
        None => FileConfig::default(),
    };
    let role = match a.role.or(f.role).as_deref() {
        Some("p0") => Role::P0,
        Some("p1") => Role::P1,
        Some("helper") => Role::Helper,
        Some(r) => return Err(format!("--role {r}: use p0, p1 or helper")),
        None => return Err("--role p0|p1|helper is required".into()),
    };
    let default_port = match role {
        Role::P0 => 8100,
        Role::P1 => 8101,
        _ => 8102,
    };
    let listen: SocketAddr = a
        .listen
        .or(f.listen)
        .unwrap_or_else(|| format!("127.0.0.1:{default_port}"))
        .parse()
        .map_err(|e| format!("--listen: {e} (write IP:PORT, e.g. 0.0.0.0:{default_port})"))?;
    let admin: Option<SocketAddr> = match a.admin_listen.or(f.admin_listen) {
        Some(s) => {
            let addr: SocketAddr = s.parse().map_err(|e| {
                format!("--admin-listen {s}: {e} (write IP:PORT, e.g. 127.0.0.1:9100)")
            })?;
            if addr == listen {
                return Err("--admin-listen must differ from --listen".into());
            }
            if !addr.ip().is_loopback() && !private_address(&addr) {
                return Err(format!(
                    "--admin-listen {addr}: plain HTTP; use a loopback or private (10/8, 172.16/12, 192.168/16, fc00::/7) address"
                ));
            }
            Some(addr)
        }
        None => None,
    };
    let p1 = a.p1.or(f.p1);
    let public_p1 = a.public_p1.or(f.public_p1);
    let helper = a.helper.or(f.helper);
    let mut models = a.models;
    if models.is_empty() {
        models = f.models;
    }
    let cert = a.tls_cert.or(f.tls_cert);
    let key = a.tls_key.or(f.tls_key);
    let tls = match (cert, key) {
        (Some(c), Some(k)) => Some((read(&c, "certificate")?, read(&k, "key")?)),
        (None, None) => None,
        _ => return Err("give both --tls-cert and --tls-key".into()),
    };
    let ca = match a.tls_ca.or(f.tls_ca) {
        Some(p) => Some(read(&p, "CA certificate")?),
        None => None,
    };
    let insecure = a.insecure_no_tls || f.insecure_no_tls.unwrap_or(false);
    serve::check_tls(&listen, &[&p1, &helper], tls.is_some(), insecure)?;
    for u in [&p1, &helper].into_iter().flatten() {
        if u.starts_with("wss://") && ca.is_none() {
            return Err(format!(
                "dialing {u} needs --tls-ca (the CA that signed the parties' certificates)"
            ));
        }
        if u.starts_with("wss://") && tls.is_none() {
            return Err(format!(
                "dialing {u} needs this party's own --tls-cert and --tls-key: parties show each other their certificates (mutual TLS)"
            ));
        }
    }
    if tls.is_some() && role != Role::P0 && ca.is_none() {
        return Err(format!(
            "{} needs --tls-ca: it checks the certificates of the parties that dial it (mutual TLS)",
            role_name(role)
        ));
    }
    let key_file = a
        .key_file
        .or(f.key_file)
        .ok_or("--key-file is required: the parties authenticate each other with one key per pair (`sotto certs --out DIR` writes DIR/p0.keys, DIR/p1.keys, DIR/helper.keys)")?;
    let key_text = read_bounded(&key_file, "key file", MAX_KEY_FILE)?;
    let keys = PartyKeys::parse(role, &String::from_utf8_lossy(&key_text))
        .map_err(|e| format!("{}: {e}", key_file.display()))?;
    warn_if_readable_by_others(&key_file);
    let pool = serve::parse_pool(&a.pool.or(f.pool).unwrap_or_else(|| "1:16".into()))?;
    let max_batch = a.max_batch.or(f.max_batch).unwrap_or(128);
    if max_batch == 0 || max_batch > 4096 {
        return Err("--max-batch is 1 to 4096".into());
    }
    if let Some((b, _)) = pool.iter().find(|(b, _)| *b > max_batch) {
        return Err(format!("--pool batch {b} exceeds --max-batch {max_batch}"));
    }
    let timeout = Duration::from_millis(a.timeout_ms.or(f.timeout_ms).unwrap_or(5000).max(1));
    let budget_mb = a
        .inflight_budget_mb
        .or(f.inflight_budget_mb)
        .unwrap_or(DEFAULT_BUDGET_MB);
    if !(1..=1 << 20).contains(&budget_mb) {
        return Err("--inflight-budget-mb is 1 to 1048576".into());
    }
    let idle_timeout = Duration::from_millis(
        a.idle_timeout_ms
            .or(f.idle_timeout_ms)
            .unwrap_or(60_000)
            .max(100),
    );
    let max_connections = a
        .max_connections
        .or(f.max_connections)
        .unwrap_or(DEFAULT_MAX_CONNECTIONS);
    if max_connections < 4 {
        return Err("--max-connections is at least 4".into());
    }
    let client_keys = match a.client_keys.or(f.client_keys) {
        Some(p) => {
            let text = read_bounded(&p, "client keys file", serve::keys::MAX_FILE)?;
            let keys = serve::keys::ClientKeys::parse(&String::from_utf8_lossy(&text))
                .map_err(|e| format!("{}: {e}", p.display()))?;
            if role == Role::Helper {
                eprintln!("note: the helper serves no client: --client-keys is not used here");
                None
            } else {
                Some(std::sync::Arc::new(keys))
            }
        }
        None => None,
    };
    let models = serve::load_models(role, &models)?;
    Ok((
        ServeConfig {
            role,
            p1,
            public_p1,
            helper,
            models,
            tls,
            ca,
            keys,
            pool,
            max_batch,
            timeout,
            inflight_budget: budget_mb << 20,
            idle_timeout,
            max_connections,
            web: a.web.or(f.web),
            allowed_origins: if a.allowed_origins.is_empty() {
                f.allowed_origins
            } else {
                a.allowed_origins
            }
            .into_iter()
            .map(|o| o.trim_end_matches('/').to_string())
            .collect(),
            client_keys,
            admin,
            verbose: a.verbose,
        },
        listen,
    ))
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

/// `sotto serve`.
pub fn serve_cmd(a: ServeArgs) -> Result<(), String> {
    let (cfg, listen) = serve_config(a)?;
    let rt = runtime()?;
    rt.block_on(async move {
        // P1 and the helper take party links: their peers' certificates are checked against
        // the deployment's CA (P0 takes none).
        let party_ca = match cfg.role {
            Role::P0 => None,
            _ => cfg.ca.as_deref(),
        };
        let bound = serve::bind(listen, &cfg.tls, party_ca, cfg.max_connections).await?;
        let scheme = if cfg.tls.is_some() { "wss" } else { "ws" };
        eprintln!(
            "sotto {:?} on {scheme}://{} with model(s) {}{}",
            cfg.role,
            bound.local_addr().map_err(|e| e.to_string())?,
            cfg.models
                .iter()
                .map(|m| m.id.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            match &cfg.client_keys {
                Some(k) => format!("; clients need one of {} API keys", k.len()),
                None => String::new(),
            }
        );
        tokio::select! {
            r = serve::run(cfg, bound) => r,
            _ = tokio::signal::ctrl_c() => { eprintln!("stopping"); Ok(()) }
        }
    })
}

/// `sotto certs`: a CA, a certificate per party (valid for its own names), and the parties'
/// keys (one per pair).
pub fn certs(out: &Path, names: &[String]) -> Result<(), String> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let roles = [Role::P0, Role::P1, Role::Helper];
    let mut own: [Vec<String>; 3] = Default::default();
    for n in names {
        let Some((role, host)) = n.split_once('=') else {
            return Err(format!(
                "--name {n}: say which party it names, e.g. --name p0={n} (each certificate is valid for its own party's names only, so one party cannot pose as another)"
            ));
        };
        let i = roles
            .iter()
            .position(|r| role_name(*r) == role.trim())
            .ok_or_else(|| format!("--name {n}: the party is p0, p1 or helper"))?;
        let host = host.trim();
        if host.is_empty() {
            return Err(format!("--name {n}: no host"));
        }
        if !own[i].iter().any(|h| h == host) {
            own[i].push(host.to_string());
        }
    }
    let e = |e: rcgen::Error| e.to_string();
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let write = |name: &str, data: &[u8], secret: bool| {
        let p = out.join(name);
        if secret {
            write_secret(&p, data)?;
        } else {
            std::fs::write(&p, data).map_err(|e| format!("{}: {e}", p.display()))?;
        }
        println!("wrote {}", p.display());
        Ok::<(), String>(())
    };
    let ca_key = KeyPair::generate().map_err(e)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.distinguished_name
        .push(DnType::CommonName, "sotto deployment CA");
    let ca_cert = ca.self_signed(&ca_key).map_err(e)?;
    write("ca.pem", ca_cert.pem().as_bytes(), false)?;
    let issuer = Issuer::new(ca, ca_key);
    let keys = PartyKeys::generate().map_err(|e| e.to_string())?;
    for (i, role) in roles.iter().enumerate() {
        let name = role_name(*role);
        let mut sans: Vec<String> = vec!["localhost".into(), "127.0.0.1".into()];
        sans.extend(own[i].iter().cloned());
        // The role's own name: a party link's peer is known by it (mutual TLS).
        sans.push(sotto_net::tls::role_dns_name(*role));
        let key = KeyPair::generate().map_err(e)?;
        let mut p = CertificateParams::new(sans.clone()).map_err(e)?;
        p.distinguished_name
            .push(DnType::CommonName, format!("sotto {name}"));
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = p.signed_by(&key, &issuer).map_err(e)?;
        write(&format!("{name}.pem"), cert.pem().as_bytes(), false)?;
        write(&format!("{name}.key"), key.serialize_pem().as_bytes(), true)?;
        write(&format!("{name}.keys"), keys[i].to_text().as_bytes(), true)?;
        println!("  {name}: certificate for {}", sans.join(", "));
    }
    println!(
        "copy ca.pem to every party, and each party's own .pem, .key and .keys to its host only"
    );
    Ok(())
}

/// The client options of `sotto predict`: the model, the CA for wss:// URLs, the API key.
pub fn client_options(
    model: &str,
    ca: Option<&Path>,
    api_key_file: Option<&Path>,
) -> Result<ClientOptions, String> {
    let ca_pem = match ca {
        Some(p) => Some(read(p, "CA certificate")?),
        None => None,
    };
    let api_key = match api_key_file {
        Some(p) => Some(
            String::from_utf8_lossy(&read_bounded(p, "API key file", 4096)?)
                .trim()
                .to_string(),
        ),
        None => None,
    };
    Ok(ClientOptions {
        model: model.to_string(),
        ca_pem,
        api_key,
        ..ClientOptions::default()
    })
}

/// `sotto predict`: the inputs of `input` (an .npy file) through P0 and P1.
pub fn predict(
    p0: &str,
    p1: &str,
    input: &Path,
    limit: Option<usize>,
    batch: usize,
    opts: ClientOptions,
) -> Result<(), String> {
    let rt = runtime()?;
    rt.block_on(async {
        let client = Client::connect(p0, p1, opts)
            .await
            .map_err(|e| e.to_string())?;
        // The same checks as eval and plain, against the served model: dtype, order, shape
        // (NHWC against NCHW named), and uint8 pixels divided by 255 only for a model whose
        // input bound is 1.
        let m = client.manifest();
        let per: usize = m.input_shape.iter().product();
        let (x, n_all) = crate::data::inputs(input, &m.input_shape, m.input_bound)?;
        let n = n_all.min(limit.unwrap_or(usize::MAX));
        let mut results = Vec::new();
        let mut i = 0;
        while i < n {
            let b = batch.min(n - i);
            let xs: Vec<f32> = x[i * per..(i + b) * per]
                .iter()
                .map(|v| *v as f32)
                .collect();
            let t = Instant::now();
            let p = client.predict(&xs, b).await.map_err(|e| e.to_string())?;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            for j in 0..b {
                let row = &p.logits[j * p.output_len..(j + 1) * p.output_len];
                let mut o = serde_json::json!({
                    "index": i + j,
                    "label": p.labels[j],
                    "logits": row,
                    "ms": ms,
                });
                if let Some(pr) = &p.probabilities {
                    o["probabilities"] =
                        serde_json::json!(&pr[j * p.output_len..(j + 1) * p.output_len]);
                }
                results.push(o);
            }
            i += b;
        }
        let (b0, b1) = client.bytes_sent();
        let model = client.manifest().model_id.clone();
        client.close().await;
        let out = serde_json::json!({
            "model": model,
            "predictions": results,
            "bytes_sent": {"p0": b0, "p1": b1},
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?
        );
        Ok(())
    })
}
