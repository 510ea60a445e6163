//! The party handshake (right key and role accepted; wrong key, wrong role and a silent peer
//! refused) and TLS links (a certificate from the deployment's CA accepted, another refused).

use std::time::Duration;

use sotto_net::auth::{accept, dial, upgrade_token, PartyKeys, Psk, UpgradeGuard};
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

fn keys() -> [PartyKeys; 3] {
    PartyKeys::generate().expect("os rng")
}

#[tokio::test]
async fn the_right_key_and_role_pass() {
    let [_, k1, kh] = keys();
    let (mut d, mut a) = pair().await;
    let acc =
        tokio::spawn(async move { accept(&mut a, &kh, &[Role::P0, Role::P1], T, None).await });
    dial(&mut d, &k1, Role::Helper, T, None)
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
    let [_, _, kh] = keys();
    let [other, _, _] = keys();
    let acc = tokio::spawn(async move { accept(&mut a, &kh, &[Role::P0], T, None).await });
    let e = dial(&mut d, &other, Role::Helper, T, None)
        .await
        .expect_err("refused");
    assert!(matches!(e, NetError::Auth(_)), "{e}");
    assert!(e.to_string().contains("party key"), "{e}");
    assert!(matches!(acc.await.expect("join"), Err(NetError::Auth(_))));
}

/// P1 holds the P1–helper key, not the P0–helper one: claiming to be P0 fails.
#[tokio::test]
async fn a_party_cannot_pose_as_another() {
    let [k0, k1, kh] = keys();
    // P1's keys, but the role in its handshake says P0.
    let posing = PartyKeys::parse(
        Role::P0,
        &format!(
            "p1 = {}\nhelper = {}\n",
            Psk::random().expect("rng").to_hex(),
            // the only helper key P1 has is its own pair's
            k1.to_text()
                .lines()
                .find(|l| l.starts_with("helper"))
                .and_then(|l| l.split('=').nth(1))
                .expect("helper line")
                .trim()
        ),
    )
    .expect("parses");
    let (mut d, mut a) = pair().await;
    let acc =
        tokio::spawn(async move { accept(&mut a, &kh, &[Role::P0, Role::P1], T, None).await });
    let e = dial(&mut d, &posing, Role::Helper, T, None)
        .await
        .expect_err("refused");
    assert!(e.to_string().contains("party key"), "{e}");
    assert!(acc.await.expect("join").is_err());
    // and the real P0 still passes
    let guard = UpgradeGuard::default();
    let kh = PartyKeys::parse(Role::Helper, &helper_text(&k0, &k1)).expect("helper keys");
    assert_eq!(
        guard
            .check(&kh, &upgrade_token(&k0, Role::Helper).expect("token"))
            .expect("P0's token"),
        Role::P0
    );
    assert!(guard
        .check(&kh, &upgrade_token(&posing, Role::Helper).expect("token"))
        .is_err());
}

/// The helper's key file for the pairs of `k0` and `k1`.
fn helper_text(k0: &PartyKeys, k1: &PartyKeys) -> String {
    let find = |k: &PartyKeys| {
        k.to_text()
            .lines()
            .find(|l| l.starts_with("helper"))
            .and_then(|l| l.split('=').nth(1))
            .expect("helper line")
            .trim()
            .to_string()
    };
    format!("p0 = {}\np1 = {}\n", find(k0), find(k1))
}

#[test]
fn upgrade_tokens_are_checked_and_good_once() {
    let [k0, k1, kh] = keys();
    let g = UpgradeGuard::default();
    let t = upgrade_token(&k0, Role::Helper).expect("token");
    assert_eq!(g.check(&kh, &t).expect("valid"), Role::P0);
    let e = g.check(&kh, &t).expect_err("replay");
    assert!(e.to_string().contains("replayed"), "{e}");
    assert_eq!(
        g.check(&kh, &upgrade_token(&k1, Role::Helper).expect("token"))
            .expect("P1"),
        Role::P1
    );
    // a token for another acceptor, a forged MAC, garbage, a stale time
    let for_p1 = upgrade_token(&k0, Role::P1).expect("token");
    assert!(g.check(&kh, &for_p1).is_err());
    let mut forged = upgrade_token(&k0, Role::Helper).expect("token");
    let last = forged.pop().expect("char");
    forged.push(if last == '0' { '1' } else { '0' });
    assert!(g.check(&kh, &forged).is_err());
    for junk in ["", "v1", "v1.p0.1.2.3", &"x".repeat(300), "v2.p0.0.00.00"] {
        assert!(g.check(&kh, junk).is_err(), "{junk:?}");
    }
    let parts: Vec<String> = upgrade_token(&k0, Role::Helper)
        .expect("token")
        .split('.')
        .map(String::from)
        .collect();
    let stale = format!("v1.p0.{}.{}.{}", 1_000_000, parts[3], parts[4]);
    assert!(g
        .check(&kh, &stale)
        .expect_err("stale")
        .to_string()
        .contains("time"));
    // the helper takes no party connection from a client or from itself
    assert!(g
        .check(
            &kh,
            &format!("v1.client.{}.{}.{}", parts[2], parts[3], parts[4])
        )
        .is_err());
}

#[tokio::test]
async fn an_unexpected_role_is_refused() {
    let [k0, _, kh] = keys();
    let [_, k1b, _] = keys();
    let (mut d, mut a) = pair().await;
    // P1 only takes P0; a helper dialing it is refused.
    let k1 = k1b.clone();
    let acc = tokio::spawn(async move { accept(&mut a, &k1, &[Role::P0], T, None).await });
    let e = dial(&mut d, &kh, Role::P1, T, None)
        .await
        .expect_err("refused");
    assert!(e.to_string().contains("takes no party connection"), "{e}");
    assert!(acc.await.expect("join").is_err());
    // And a dialer that expects P1 but reaches someone else stops at once.
    let (mut d, mut a) = pair().await;
    tokio::spawn(async move { accept(&mut a, &kh, &[Role::P0], T, None).await });
    let e = dial(&mut d, &k0, Role::P1, T, None)
        .await
        .expect_err("wrong peer");
    assert!(e.to_string().contains("says it is Helper"), "{e}");
}

#[tokio::test]
async fn a_silent_peer_times_out() {
    let [_, _, kh] = keys();
    let (_d, mut a) = pair().await;
    let t = std::time::Instant::now();
    let e = accept(&mut a, &kh, &[Role::P0], Duration::from_millis(300), None)
        .await
        .expect_err("timeout");
    assert!(t.elapsed() < Duration::from_secs(2), "{e}");
}

#[test]
fn keys_parse_from_hex_only_and_weak_keys_are_refused() {
    let k = Psk::random().expect("rng");
    assert_eq!(
        Psk::from_hex(&format!("  {}\n", k.to_hex())).expect("round trip"),
        k
    );
    assert!(Psk::from_hex("abcd").is_err());
    assert!(Psk::from_hex(&"zz".repeat(32)).is_err());
    assert!(Psk::from_hex(&"00".repeat(32)).is_err(), "all-zero key");
    assert!(Psk::from_hex(&"ab".repeat(32)).is_err(), "equal bytes");
    assert_eq!(format!("{k:?}"), "Psk(..)");
}

#[test]
fn key_files_round_trip_and_bad_ones_are_refused() {
    let [k0, k1, kh] = keys();
    for k in [&k0, &k1, &kh] {
        let back = PartyKeys::parse(k.me(), &k.to_text()).expect("round trip");
        assert_eq!(&back, k);
        assert!(
            !format!("{k:?}").contains(&k.to_text()[80..100]),
            "Debug hides keys"
        );
    }
    let h = || Psk::random().expect("rng").to_hex();
    // the old single shared key
    let e = PartyKeys::parse(Role::P0, &h()).expect_err("single key");
    assert!(e.to_string().contains("sotto certs"), "{e}");
    // a missing peer, an unknown or wrong peer, a duplicate, the same key twice, oversize
    assert!(PartyKeys::parse(Role::P0, &format!("p1 = {}", h())).is_err());
    assert!(PartyKeys::parse(
        Role::P0,
        &format!("p1 = {}\nhelper = {}\np9 = {}", h(), h(), h())
    )
    .is_err());
    assert!(PartyKeys::parse(Role::P0, &format!("p1 = {}\np0 = {}", h(), h())).is_err());
    assert!(PartyKeys::parse(Role::P0, &format!("p1 = {}\np1 = {}", h(), h())).is_err());
    let same = h();
    assert!(PartyKeys::parse(Role::P0, &format!("p1 = {same}\nhelper = {same}")).is_err());
    assert!(PartyKeys::parse(Role::P0, &"#".repeat(5000)).is_err());
    assert!(PartyKeys::parse(
        Role::P0,
        &format!("# c\n\np1 = {}\nhelper = {}\n", h(), h())
    )
    .is_ok());
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
    let cfg =
        tls::server_config(cert_pem.as_bytes(), key_pem.as_bytes(), None).expect("server config");
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
    assert!(tls::server_config(c.as_bytes(), b"junk", None).is_err());
}

fn cert_named(ca: &rcgen::Issuer<'_, rcgen::KeyPair>, names: &[String]) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut p = rcgen::CertificateParams::new(names.to_vec()).expect("params");
    p.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let c = p.signed_by(&key, ca).expect("sign");
    (c.pem(), key.serialize_pem())
}

/// Mutual TLS: the server reads the dialer's role from its certificate; a client without a
/// certificate is still accepted (browsers), with no role; another CA's certificate is refused.
#[tokio::test]
async fn the_peer_role_comes_from_its_certificate() {
    let (ca_pem, issuer) = ca();
    let (sc, sk) = cert_named(&issuer, &["localhost".into()]);
    let cfg = tls::server_config(sc.as_bytes(), sk.as_bytes(), Some(ca_pem.as_bytes()))
        .expect("server config");
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let acc = tokio_rustls::TlsAcceptor::from(cfg.clone());
            tokio::spawn(async move {
                if let Ok(s) = acc.accept(tcp).await {
                    let role = format!("{:?}", tls::peer_role(s.get_ref().1.peer_certificates()));
                    if let Ok(ws) = tokio_tungstenite::accept_async(s).await {
                        let mut d = Duplex::from_ws(ws);
                        let f = sotto_wire::Frame {
                            kind: sotto_wire::Kind::Share,
                            session: 1,
                            step: 1,
                            payload: role.into_bytes(),
                        };
                        let _ = d.send_frame(&f).await;
                    }
                }
            });
        }
    });
    let url = format!("wss://localhost:{port}/");
    let seen = |cfg| async {
        let mut d = tls::connect(&url, Some(cfg), sotto_net::party_ws_config()).await?;
        let f = d.recv_frame(1024, T).await?;
        Ok::<String, NetError>(String::from_utf8_lossy(&f.payload).into_owned())
    };
    for (names, want) in [
        (vec![tls::role_dns_name(Role::P0)], "Some(P0)"),
        (
            vec!["localhost".into(), tls::role_dns_name(Role::Helper)],
            "Some(Helper)",
        ),
        (vec!["localhost".into()], "None"),
        // A certificate naming two roles states none.
        (
            vec![tls::role_dns_name(Role::P0), tls::role_dns_name(Role::P1)],
            "None",
        ),
    ] {
        let (c, k) = cert_named(&issuer, &names);
        let cfg = tls::party_client_config(ca_pem.as_bytes(), c.as_bytes(), k.as_bytes())
            .expect("client config");
        assert_eq!(seen(cfg).await.expect("accepted"), want, "{names:?}");
    }
    let plain = tls::client_config(ca_pem.as_bytes()).expect("client config");
    assert_eq!(seen(plain).await.expect("accepted"), "None");
    // A certificate from another CA: the handshake fails.
    let (_, other) = ca();
    let (c, k) = cert_named(&other, &[tls::role_dns_name(Role::P0)]);
    let cfg = tls::party_client_config(ca_pem.as_bytes(), c.as_bytes(), k.as_bytes())
        .expect("client config");
    assert!(seen(cfg).await.is_err());
}

/// The handshake is bound to the TLS channel: a dialer and an acceptor that see different
/// channels (a relay, or a TLS-terminating proxy between them) do not authenticate, even with
/// the right keys.
#[tokio::test]
async fn a_handshake_in_another_channel_is_refused() {
    let [_, k1, kh] = keys();
    let (mut d, mut a) = pair().await;
    let acc =
        tokio::spawn(async move { accept(&mut a, &kh, &[Role::P1], T, Some(&[1u8; 32])).await });
    let e = dial(&mut d, &k1, Role::Helper, T, Some(&[2u8; 32]))
        .await
        .expect_err("different channels");
    assert!(matches!(e, NetError::Auth(_)), "{e}");
    assert!(acc.await.expect("join").is_err());
    // the same binding on both sides passes
    let [_, k1, kh] = keys();
    let (mut d, mut a) = pair().await;
    let acc =
        tokio::spawn(async move { accept(&mut a, &kh, &[Role::P1], T, Some(&[7u8; 32])).await });
    dial(&mut d, &k1, Role::Helper, T, Some(&[7u8; 32]))
        .await
        .expect("same channel");
    assert_eq!(acc.await.expect("join").expect("accepted"), Role::P1);
}
