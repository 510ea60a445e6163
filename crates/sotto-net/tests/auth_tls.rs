//! The party handshake (right key and role accepted; wrong key, wrong role and a silent peer
//! refused) and TLS links (a certificate from the deployment's CA accepted, another refused).

use std::time::Duration;

use sotto_net::auth::{accept, dial, Psk};
use sotto_net::{tls, Duplex, NetError};
use sotto_wire::Role;

/// A connected pair of links over loopback TCP (plain WebSocket).
async fn pair() -> (Duplex, Duplex) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let acc = tokio::spawn(async move {
        let (tcp, _) = l.accept().await.expect("accept");
        Duplex::from_ws(tokio_tungstenite::accept_async(tcp).await.expect("ws"))
    });
    let d = tls::connect(&format!("ws://{addr}/"), None, sotto_net::party_ws_config())
        .await
        .expect("dial");
    (d, acc.await.expect("join"))
}

const T: Duration = Duration::from_secs(2);

#[tokio::test]
async fn the_right_key_and_role_pass() {
    let k = Psk::random().expect("os rng");
    let (mut d, mut a) = pair().await;
    let k2 = k.clone();
    let acc =
        tokio::spawn(
            async move { accept(&mut a, Role::Helper, &[Role::P0, Role::P1], &k2, T).await },
        );
    dial(&mut d, Role::P1, Role::Helper, &k, T)
        .await
        .expect("dialer accepted");
    assert_eq!(
        acc.await.expect("join").expect("acceptor accepted"),
        Role::P1
    );
}

#[tokio::test]
async fn a_wrong_key_is_refused_on_both_sides() {
    let (mut d, mut a) = pair().await;
    let (k, other) = (Psk::random().expect("rng"), Psk::random().expect("rng"));
    let acc = tokio::spawn(async move { accept(&mut a, Role::Helper, &[Role::P0], &k, T).await });
    let e = dial(&mut d, Role::P0, Role::Helper, &other, T)
        .await
        .expect_err("refused");
    assert!(matches!(e, NetError::Auth(_)), "{e}");
    assert!(e.to_string().contains("party key"), "{e}");
    assert!(matches!(acc.await.expect("join"), Err(NetError::Auth(_))));
}

#[tokio::test]
async fn an_unexpected_role_is_refused() {
    let k = Psk::random().expect("rng");
    let (mut d, mut a) = pair().await;
    let k2 = k.clone();
    // P1 only takes P0; a helper dialing it is refused even with the key.
    let acc = tokio::spawn(async move { accept(&mut a, Role::P1, &[Role::P0], &k2, T).await });
    let e = dial(&mut d, Role::Helper, Role::P1, &k, T)
        .await
        .expect_err("refused");
    assert!(e.to_string().contains("takes no party connection"), "{e}");
    assert!(acc.await.expect("join").is_err());
    // And a dialer that expects P1 but reaches someone else stops at once.
    let (mut d, mut a) = pair().await;
    let k2 = k.clone();
    tokio::spawn(async move { accept(&mut a, Role::Helper, &[Role::P0], &k2, T).await });
    let e = dial(&mut d, Role::P0, Role::P1, &k, T)
        .await
        .expect_err("wrong peer");
    assert!(e.to_string().contains("says it is Helper"), "{e}");
}

#[tokio::test]
async fn a_silent_peer_times_out() {
    let k = Psk::random().expect("rng");
    let (_d, mut a) = pair().await;
    let t = std::time::Instant::now();
    let e = accept(
        &mut a,
        Role::Helper,
        &[Role::P0],
        &k,
        Duration::from_millis(300),
    )
    .await
    .expect_err("timeout");
    assert!(t.elapsed() < Duration::from_secs(2), "{e}");
}

#[test]
fn keys_parse_from_hex_only() {
    let k = Psk::random().expect("rng");
    assert_eq!(
        Psk::from_hex(&format!("  {}\n", k.to_hex())).expect("round trip"),
        k
    );
    assert!(Psk::from_hex("abcd").is_err());
    assert!(Psk::from_hex(&"zz".repeat(32)).is_err());
    assert_eq!(format!("{k:?}"), "Psk(..)");
}

fn cert(ca: &rcgen::Issuer<'_, rcgen::KeyPair>) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let c = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .expect("params")
        .signed_by(&key, ca)
        .expect("sign");
    (c.pem(), key.serialize_pem())
}

fn ca() -> (String, rcgen::Issuer<'static, rcgen::KeyPair>) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let c = p.self_signed(&key).expect("self-signed");
    (c.pem(), rcgen::Issuer::new(p, key))
}

async fn tls_server(cert_pem: &str, key_pem: &str) -> std::net::SocketAddr {
    let cfg = tls::server_config(cert_pem.as_bytes(), key_pem.as_bytes()).expect("server config");
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let acc = tokio_rustls::TlsAcceptor::from(cfg.clone());
            tokio::spawn(async move {
                if let Ok(s) = acc.accept(tcp).await {
                    if let Ok(ws) = tokio_tungstenite::accept_async(s).await {
                        let mut d = Duplex::from_ws(ws);
                        // Echo one frame.
                        if let Ok(f) = d.recv_frame(1024, T).await {
                            let _ = d.send_frame(&f).await;
                        }
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn tls_links_trust_only_the_deployment_ca() {
    let (ca_pem, issuer) = ca();
    let (c, k) = cert(&issuer);
    let addr = tls_server(&c, &k).await;
    let url = format!("wss://localhost:{}/", addr.port());
    let cfg = tls::client_config(ca_pem.as_bytes()).expect("client config");
    let mut d = tls::connect(&url, Some(cfg), sotto_net::party_ws_config())
        .await
        .expect("trusted");
    let f = sotto_wire::Frame {
        kind: sotto_wire::Kind::Share,
        session: 5,
        step: 1,
        payload: vec![7; 9],
    };
    d.send_frame(&f).await.expect("send");
    assert_eq!(d.recv_frame(1024, T).await.expect("echo"), f);
    // Another CA's certificate is refused; so is wss:// without a CA, and junk PEM.
    let (other_pem, _) = ca();
    let cfg = tls::client_config(other_pem.as_bytes()).expect("client config");
    let e = tls::connect(&url, Some(cfg), sotto_net::party_ws_config())
        .await
        .expect_err("untrusted");
    assert!(matches!(e, NetError::Tls(_)), "{e}");
    assert!(tls::connect(&url, None, sotto_net::party_ws_config())
        .await
        .is_err());
    assert!(tls::client_config(b"not pem").is_err());
    assert!(tls::server_config(c.as_bytes(), b"junk").is_err());
}
