//! Private predictions over real loopback WebSockets, and a party that goes away.

use std::time::Duration;

use sotto_core::fixed::{decode_with, FixedPoint};
use sotto_core::protocols as p;
use sotto_core::session::{client_receive_output, client_send_input_bits, Dealer, Server};
use sotto_core::CoreError;
use sotto_model::private::{deal_load, deal_predict, load, predict, share_weights};
use sotto_model::{import, Plan};
use sotto_net::loopback_mesh;

fn m2c(e: sotto_model::ModelError) -> CoreError {
    CoreError::Protocol(e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_a_predicts_over_websockets() {
    let path =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/network_a.onnx");
    let model = import(&std::fs::read(path).expect("bundled")).expect("imports");
    let plan = Plan::new(&model, FixedPoint::default(), 1.0).expect("fits");
    let [w0, w1] = share_weights(&plan, true).expect("os rng");
    let batch = 3;
    let x: Vec<f32> = (0..batch * 784)
        .map(|i| ((i * 31) % 256) as f32 / 255.0)
        .collect();
    let x_enc = plan.fp.encode_f32(&x).expect("pixels");
    let out_len = batch * plan.output_len;
    let [t0, t1, th, tc] = loopback_mesh(Duration::from_secs(10)).await.expect("mesh");
    let session = 42;
    let helper = {
        let plan = plan.clone();
        tokio::spawn(async move {
            let mut d = Dealer::start(th, session).await?;
            let h = deal_load(&mut d, &plan, true).await.map_err(m2c)?;
            deal_predict(&mut d, &plan, &h, batch).await.map_err(m2c)?;
            p::deal_output(&mut d, out_len).await
        })
    };
    let server = |t, w| {
        let plan = plan.clone();
        tokio::spawn(async move {
            let mut s = Server::start(t, session).await?;
            let m = load(&mut s, &plan, w).await.map_err(m2c)?;
            let xs = sotto_model::private::receive_input(&s, &plan, batch)
                .await
                .map_err(m2c)?;
            let y = predict(&mut s, &plan, &m, xs, batch).await.map_err(m2c)?;
            p::output(&mut s, &y, 64).await
        })
    };
    let s0 = server(t0, w0);
    let s1 = server(t1, w1);
    let k = plan
        .input_bits()
        .expect("private weights: the input range is enforced");
    client_send_input_bits(&tc, session, &x_enc, k)
        .await
        .expect("sends");
    let y = client_receive_output(&tc, session, out_len, 64)
        .await
        .expect("receives");
    for j in [helper, s0, s1] {
        j.await.expect("no panic").expect("party succeeds");
    }
    let got: Vec<f64> = y.iter().map(|v| decode_with(*v, plan.out_frac)).collect();
    let want = model.forward(&x, batch).expect("fits");
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 0.01, "{g} vs {w}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_party_that_dies_mid_session_gives_an_error_not_a_hang() {
    let [t0, t1, th, _tc] = loopback_mesh(Duration::from_secs(20)).await.expect("mesh");
    let session = 7;
    let started = std::time::Instant::now();
    let helper = tokio::spawn(async move {
        let mut d = Dealer::start(th, session).await?;
        p::deal_relu(&mut d, 4, 0, 64).await
    });
    // P1 receives its seed, then dies before its part of the ReLU.
    let s1 = tokio::spawn(async move {
        let _s = Server::start(&t1, session).await?;
        t1.close();
        Ok::<_, CoreError>(())
    });
    let r0 = async {
        let mut s = Server::start(t0, session).await?;
        p::relu(&mut s, &[1, 2, 3, 4], 0, 64).await
    }
    .await;
    let err = r0.expect_err("P1 is gone");
    assert!(err.to_string().contains("P1"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    let _ = helper.await;
    s1.await.expect("no panic").expect("P1 started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_session_frees_its_messages_and_fails_its_receives() {
    use sotto_core::transport::{PartyId, Tag, Transport};
    let [t0, t1, _th, _tc] = loopback_mesh(Duration::from_secs(5)).await.expect("mesh");
    let tag = |session, step| Tag { session, step };
    // Queued messages of session 7 are freed when it ends; later ones are dropped.
    t0.send(PartyId::P1, tag(7, 1), vec![1; 100])
        .await
        .expect("send");
    t0.send(PartyId::P1, tag(8, 1), vec![2; 10])
        .await
        .expect("send");
    assert_eq!(
        t1.recv(PartyId::P0, tag(8, 1)).await.expect("recv"),
        vec![2; 10]
    );
    t1.end_session(8, "done");
    assert_eq!(t1.queued_sessions(), 1, "session 7 is still queued");
    t1.end_session(7, "aborted by the test");
    assert_eq!(t1.queued_sessions(), 0);
    t0.send(PartyId::P1, tag(7, 2), vec![3; 10])
        .await
        .expect("send");
    let t = std::time::Instant::now();
    let e = t1.recv(PartyId::P0, tag(7, 2)).await.expect_err("ended");
    assert!(e.to_string().contains("aborted by the test"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(1));
    assert!(t1.is_ended(7));
    // A receive waiting when its session ends fails at once, not at the timeout.
    let t1 = std::sync::Arc::new(t1);
    let waiting = {
        let t1 = t1.clone();
        tokio::spawn(async move { t1.recv(PartyId::P0, tag(9, 1)).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t = std::time::Instant::now();
    t1.end_session(9, "peer aborted");
    assert!(waiting.await.expect("join").is_err());
    assert!(t.elapsed() < Duration::from_secs(1));
    assert_eq!(t1.queued_sessions(), 0);
}

/// A frozen peer (its socket open, nothing read or answered, as under SIGSTOP): the link is
/// declared dead within the transport's timeout, a waiting receive fails then (not at some
/// later client timeout), and the peer reads as down. A live peer that is merely idle stays
/// up: its link answers the pings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_peer_is_declared_dead_within_the_timeout() {
    use sotto_core::transport::{PartyId, Tag, Transport};
    use sotto_net::{tls, WsTransport};
    let timeout = Duration::from_millis(2000);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    // The frozen side: completes the WebSocket handshake, then never polls the socket.
    let frozen = tokio::spawn(async move {
        let (tcp, _) = l.accept().await.expect("accept");
        let ws = tokio_tungstenite::accept_async(tcp).await.expect("ws");
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(ws);
    });
    let link = tls::connect(&format!("ws://{addr}/"), None, sotto_net::party_ws_config())
        .await
        .expect("dial");
    let t0 = WsTransport::new(PartyId::P0, timeout);
    t0.attach(PartyId::P1, link);
    assert!(t0.is_up(PartyId::P1));
    let started = std::time::Instant::now();
    let e = t0
        .recv(
            PartyId::P1,
            Tag {
                session: 1,
                step: 1,
            },
        )
        .await
        .expect_err("nothing comes");
    assert!(
        started.elapsed() <= timeout + Duration::from_millis(700),
        "{:?}",
        started.elapsed()
    );
    // Declared dead within the deadline plus about one ping interval.
    while t0.is_up(PartyId::P1) {
        assert!(
            started.elapsed() < timeout + Duration::from_millis(1200),
            "still up after {:?} ({e})",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    frozen.abort();

    // An idle but live pair stays up well past the deadline.
    let [a, b, _h, _c] = sotto_net::loopback_mesh(Duration::from_millis(1500))
        .await
        .expect("mesh");
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert!(
        a.is_up(PartyId::P1) && b.is_up(PartyId::P0),
        "pings keep an idle link up"
    );
}

/// Many messages queued at once (the link's writer sends them in bursts of up to 64 per
/// flush): every one arrives whole, under its own tag, whatever its size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_queued_messages_arrives_whole_and_in_place() {
    use sotto_core::transport::{PartyId, Tag, Transport};
    let [t0, t1, _th, _tc] = loopback_mesh(Duration::from_secs(20)).await.expect("mesh");
    let session = 99;
    // Sizes from empty to 300 KB (several socket writes), 300 messages: more than four bursts.
    let size = |i: u32| match i % 5 {
        0 => 0,
        1 => 1,
        2 => 1 + (i as usize * 37) % 4000,
        3 => 70_000 + i as usize,
        _ => 300_000 - i as usize,
    };
    let body = |i: u32| -> Vec<u8> {
        (0..size(i))
            .map(|j| (j as u32).wrapping_mul(2_654_435_761).wrapping_add(i) as u8)
            .collect()
    };
    let n = 300u32;
    let sends = (0..n).map(|i| t0.send(PartyId::P1, Tag { session, step: i }, body(i)));
    // All queued before any is awaited to completion by the receiver.
    for s in futures_util::future::join_all(sends).await {
        s.expect("queued");
    }
    // Received in reverse order: each receive finds its own message.
    for i in (0..n).rev() {
        let got = t1
            .recv(PartyId::P0, Tag { session, step: i })
            .await
            .expect("arrives");
        assert_eq!(got.len(), size(i), "message {i}");
        assert!(got == body(i), "message {i} differs");
    }
}
