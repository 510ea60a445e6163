//! TLS for party and client links (rustls with the `ring` provider), and a WebSocket dialer
//! for `ws://` and `wss://` URLs.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use sotto_wire::Role;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::{Duplex, NetError, Result};

/// WebSocket limits (re-exported for dialers).
pub type WsConfig = WebSocketConfig;

/// How long a TCP connect plus TLS and WebSocket handshakes may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| NetError::Tls(format!("{what}: {e}")))?;
    if certs.is_empty() {
        return Err(NetError::Tls(format!(
            "{what}: no certificate in the PEM data"
        )));
    }
    Ok(certs)
}

fn roots(ca_pem: &[u8]) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for c in certs(ca_pem, "CA certificate")? {
        roots
            .add(c)
            .map_err(|e| NetError::Tls(format!("CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// The name a party's certificate carries to state its role (`p0.party.sotto`, ...): a party
/// link's peer is known by it (mutual TLS), not by what the peer says.
pub fn role_dns_name(role: Role) -> String {
    format!("{}.party.sotto", crate::auth::role_name(role))
}

/// A client configuration trusting only the certificates in `ca_pem` (the deployment's CA).
pub fn client_config(ca_pem: &[u8]) -> Result<Arc<ClientConfig>> {
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| NetError::Tls(e.to_string()))?
        .with_root_certificates(roots(ca_pem)?)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// A party's dialing configuration: trusts `ca_pem` and presents the party's own certificate
/// (`cert_pem`, `key_pem`) to the peer (mutual TLS).
pub fn party_client_config(
    ca_pem: &[u8],
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<ClientConfig>> {
    let chain = certs(cert_pem, "certificate")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| NetError::Tls(format!("private key: {e}")))?;
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| NetError::Tls(e.to_string()))?
        .with_root_certificates(roots(ca_pem)?)
        .with_client_auth_cert(chain, key)
        .map_err(|e| NetError::Tls(format!("certificate and key: {e}")))?;
    Ok(Arc::new(cfg))
}

/// A server configuration presenting `cert_pem` (leaf first, then any intermediates) with the
/// private key in `key_pem`. With `party_ca_pem`, a peer may present a certificate signed by
/// that CA (parties do; clients and browsers present none and are accepted as before), and
/// [`peer_role`] reads the role from it.
pub fn server_config(
    cert_pem: &[u8],
    key_pem: &[u8],
    party_ca_pem: Option<&[u8]>,
) -> Result<Arc<ServerConfig>> {
    let chain = certs(cert_pem, "certificate")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| NetError::Tls(format!("private key: {e}")))?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| NetError::Tls(e.to_string()))?;
    let builder = match party_ca_pem {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| NetError::Tls(format!("party CA: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let cfg = builder
        .with_single_cert(chain, key)
        .map_err(|e| NetError::Tls(format!("certificate and key: {e}")))?;
    Ok(Arc::new(cfg))
}

/// The party role stated by a TLS peer's certificate (already verified against the party CA
/// by the server configuration of [`server_config`]): the one of [`role_dns_name`] it is
/// valid for, `None` without a certificate or with one that names no role (or several).
pub fn peer_role(chain: Option<&[CertificateDer<'_>]>) -> Option<Role> {
    let leaf = chain?.first()?;
    let parsed = ParsedCertificate::try_from(leaf).ok()?;
    let mut found = None;
    for role in [Role::P0, Role::P1, Role::Helper] {
        let name = ServerName::try_from(role_dns_name(role)).ok()?;
        if rustls::client::verify_server_name(&parsed, &name).is_ok() {
            if found.is_some() {
                return None;
            }
            found = Some(role);
        }
    }
    found
}

/// Opens a WebSocket to `url` (`ws://` or `wss://`; `wss://` needs `tls`), within
/// [`CONNECT_TIMEOUT`].
pub async fn connect(
    url: &str,
    tls: Option<Arc<ClientConfig>>,
    ws: WebSocketConfig,
) -> Result<Duplex> {
    connect_with_headers(url, tls, ws, &[]).await
}

/// Like [`connect`], adding `headers` to the HTTP upgrade request (a party's
/// [`crate::auth::UPGRADE_HEADER`]).
pub async fn connect_with_headers(
    url: &str,
    tls: Option<Arc<ClientConfig>>,
    ws: WebSocketConfig,
    headers: &[(&'static str, String)],
) -> Result<Duplex> {
    Ok(connect_bound(url, tls, ws, headers).await?.0)
}

/// The label of the TLS exporter that binds a party handshake to its TLS channel.
pub const BINDING_LABEL: &[u8] = b"EXPORTER-sotto-party-link";

/// Like [`connect_with_headers`], also returning the TLS channel's binding (32 bytes from the
/// TLS exporter with [`BINDING_LABEL`]; `None` over `ws://`), which the party handshake
/// includes so that a handshake relayed into another TLS channel fails.
pub async fn connect_bound(
    url: &str,
    tls: Option<Arc<ClientConfig>>,
    ws: WebSocketConfig,
    headers: &[(&'static str, String)],
) -> Result<(Duplex, Option<[u8; 32]>)> {
    match tokio::time::timeout(CONNECT_TIMEOUT, connect_inner(url, tls, ws, headers)).await {
        Ok(r) => r,
        Err(_) => Err(NetError::Timeout(format!(
            "connecting to {url} took over {CONNECT_TIMEOUT:?}"
        ))),
    }
}

async fn connect_inner(
    url: &str,
    tls: Option<Arc<ClientConfig>>,
    ws: WebSocketConfig,
    headers: &[(&'static str, String)],
) -> Result<(Duplex, Option<[u8; 32]>)> {
    let mut request = url
        .into_client_request()
        .map_err(|e| NetError::Io(format!("{url}: {e}")))?;
    for (name, value) in headers {
        let v = value
            .parse()
            .map_err(|_| NetError::Io(format!("{url}: header {name} is not valid")))?;
        request.headers_mut().insert(*name, v);
    }
    let uri = request.uri().clone();
    let secure = match uri.scheme_str() {
        Some("ws") => false,
        Some("wss") => true,
        _ => return Err(NetError::Io(format!("{url}: not a ws:// or wss:// URL"))),
    };
    let host = uri
        .host()
        .ok_or_else(|| NetError::Io(format!("{url}: no host")))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| NetError::Io(format!("{url}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let err = |e: tokio_tungstenite::tungstenite::Error| NetError::Io(format!("{url}: {e}"));
    if secure {
        let cfg = tls.ok_or_else(|| {
            NetError::Tls(format!(
                "{url}: a wss:// URL needs a CA certificate to trust"
            ))
        })?;
        let name = ServerName::try_from(host.clone())
            .map_err(|e| NetError::Tls(format!("{host}: {e}")))?;
        let stream = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
            .await
            .map_err(|e| NetError::Tls(format!("{url}: {e}")))?;
        let binding = stream
            .get_ref()
            .1
            .export_keying_material([0u8; 32], BINDING_LABEL, None)
            .map_err(|e| NetError::Tls(format!("{url}: channel binding: {e}")))?;
        let (ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(ws))
            .await
            .map_err(err)?;
        Ok((Duplex::from_ws(ws), Some(binding)))
    } else {
        let (ws, _) = tokio_tungstenite::client_async_with_config(request, tcp, Some(ws))
            .await
            .map_err(err)?;
        Ok((Duplex::from_ws(ws), None))
    }
}
