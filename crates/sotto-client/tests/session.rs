//! The sans-IO client core against scripted servers: message order, routing, the role check,
//! limits, deadlines as data, cancellation and closing.

use sotto_client::session::{
    ws_url, ClientSession, Event, RequestId, Server, SessionConfig, SessionState, TAGGED_SEED,
};
use sotto_client::ClientError;
use sotto_wire::{decode, ErrorPayload, Frame, Kind, Manifest, Role, DEFAULT_MAX_PAYLOAD};

fn manifest(role: Role) -> Manifest {
    Manifest {
        model_id: "toy".into(),
        input_shape: vec![4],
        frac_bits: 16,
        output_len: 3,
        out_frac: 16,
        softmax_at_client: false,
        input_bound: 1.0,
        role,
        deployment: "5e".repeat(16),
        max_batch: 8,
        input_bits: None,
    }
}

fn cfg() -> SessionConfig {
    let mut c = SessionConfig::new("ws://p0.test:1", "http://p1.test:2/");
    c.timeout_ms = 1000;
    c.keep_last_sent = true;
    c
}

fn frames(s: &mut ClientSession, server: Server) -> Vec<Frame> {
    std::iter::from_fn(|| s.poll_transmit(server))
        .map(|b| decode(&b, DEFAULT_MAX_PAYLOAD).expect("the client sends frames"))
        .collect()
}

fn events(s: &mut ClientSession) -> Vec<Event> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

fn manifest_frame(m: &Manifest) -> Vec<u8> {
    Frame::json(Kind::Manifest, 0, 0, m).expect("json").encode()
}

fn error_frame(session: u128, step: u32, code: &str) -> Vec<u8> {
    let p = ErrorPayload {
        code: code.into(),
        message: format!("scripted {code}"),
    };
    Frame::json(Kind::Error, session, step, &p)
        .expect("json")
        .encode()
}

/// Output shares (P0's, P1's) of `values` with 16 fractional bits.
fn output_shares(values: &[f64], mask: u64) -> (Vec<u8>, Vec<u8>) {
    let mut a = Vec::new();
    let mut b = Vec::new();
    for (i, v) in values.iter().enumerate() {
        let enc = (v * 65536.0).round() as i64 as u64;
        let r = mask.wrapping_mul(i as u64 + 1).wrapping_add(0x9e37_79b9);
        a.extend_from_slice(&r.to_le_bytes());
        b.extend_from_slice(&enc.wrapping_sub(r).to_le_bytes());
    }
    (a, b)
}

fn output(session: u128, payload: Vec<u8>) -> Vec<u8> {
    Frame {
        kind: Kind::Output,
        session,
        step: 0,
        payload,
    }
    .encode()
}

/// The tag of the request the client just started (from its share to P0 and its seed to P1,
/// which must agree).
fn sent_tag(s: &mut ClientSession) -> u128 {
    let to0 = frames(s, Server::P0);
    let to1 = frames(s, Server::P1);
    assert_eq!((to0.len(), to1.len()), (1, 1));
    assert_eq!(to0[0].session, to1[0].session);
    to0[0].session
}

/// A session whose hellos were answered by a proper pair.
fn connected() -> ClientSession {
    let mut s = ClientSession::new(cfg(), 0).expect("session");
    for server in Server::BOTH {
        let hello = frames(&mut s, server);
        assert_eq!(hello.len(), 1);
        assert_eq!(hello[0].kind, Kind::Hello);
    }
    s.handle_bytes(Server::P1, &manifest_frame(&manifest(Role::P1)), 1);
    assert_eq!(s.state(), SessionState::Connecting);
    s.handle_bytes(Server::P0, &manifest_frame(&manifest(Role::P0)), 2);
    assert_eq!(s.state(), SessionState::Ready);
    assert!(matches!(events(&mut s)[..], [Event::Connected]));
    s
}

fn done(evs: Vec<Event>) -> Vec<(RequestId, Result<Vec<f64>, ClientError>)> {
    evs.into_iter()
        .filter_map(|e| match e {
            Event::Done(id, r) => Some((id, r.map(|o| o.prediction.logits))),
            _ => None,
        })
        .collect()
}

#[test]
fn urls_get_one_v1_ws_and_bad_ones_are_refused() {
    assert_eq!(ws_url("ws://h:1").unwrap(), "ws://h:1/v1/ws");
    assert_eq!(ws_url("ws://h:1/").unwrap(), "ws://h:1/v1/ws");
    assert_eq!(ws_url("ws://h:1/v1/ws").unwrap(), "ws://h:1/v1/ws");
    assert_eq!(
        ws_url("https://h/base/v1/ws/").unwrap(),
        "wss://h/base/v1/ws"
    );
    assert_eq!(ws_url("http://h:8/x").unwrap(), "ws://h:8/x/v1/ws");
    for bad in ["not a url", "ftp://h", "ws://", "ws:///x", "h:1", ""] {
        assert!(
            matches!(ws_url(bad), Err(ClientError::Input(_))),
            "{bad:?} accepted"
        );
    }
    let s = ClientSession::new(cfg(), 0).unwrap();
    assert_eq!(s.url(Server::P1), "ws://p1.test:2/v1/ws");
}

#[test]
fn a_prediction_sends_share_and_seed_at_once_under_one_tag_then_takes_both_outputs() {
    let mut s = connected();
    let id = s
        .start_predict(&[0.1, 0.2, 0.3, 0.4], 1, 10)
        .expect("start");
    // Both messages at once (no wait for P0), under one fresh random tag.
    let to0 = frames(&mut s, Server::P0);
    let to1 = frames(&mut s, Server::P1);
    assert_eq!((to0.len(), to1.len()), (1, 1));
    let tag = to0[0].session;
    assert_ne!(tag, 0);
    assert_eq!((to0[0].kind, to0[0].step), (Kind::InputShare, id));
    assert_eq!(to0[0].payload.len(), 4 * 8);
    assert_eq!(
        (to1[0].kind, to1[0].session, to1[0].step),
        (Kind::InputSeed, tag, TAGGED_SEED)
    );
    assert_eq!(to1[0].payload.len(), 32);
    assert_eq!(s.last_sent(Server::P1), &to1[0].payload[..]);
    assert_eq!(s.last_sent(Server::P0), &to0[0].payload[..]);
    // The tag is neither the seed nor part of it, and the next request gets another.
    assert!(!to1[0].payload.windows(16).any(|w| w == tag.to_le_bytes()));
    s.start_predict(&[0.0; 4], 1, 10).expect("start");
    assert_ne!(sent_tag(&mut s), tag);
    let (a, b) = output_shares(&[1.5, -2.0, 0.25], 12345);
    s.handle_bytes(Server::P1, &output(tag, b), 30);
    assert!(events(&mut s).is_empty());
    s.handle_bytes(Server::P0, &output(tag, a), 31);
    let evs = events(&mut s);
    match &evs[..] {
        [Event::Done(got, Ok(o))] => {
            assert_eq!(*got, id);
            assert_eq!(o.prediction.logits, vec![1.5, -2.0, 0.25]);
            assert_eq!(o.prediction.labels, vec![0]);
            assert_eq!(o.sent, [32 + 32, 32 + 32]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.in_flight(), 1);
}

#[test]
fn replies_out_of_order_reach_their_requests() {
    let mut s = connected();
    // (request, tag, seed) of three predictions in flight at once.
    let reqs: Vec<(u32, u128, Vec<u8>)> = (0..3)
        .map(|_| {
            let id = s.start_predict(&[0.0; 4], 1, 0).unwrap();
            let to0 = frames(&mut s, Server::P0).remove(0);
            let to1 = frames(&mut s, Server::P1).remove(0);
            assert_eq!(to0.session, to1.session);
            (id, to0.session, to1.payload)
        })
        .collect();
    // P0 answers in reverse order, P1 after it in order.
    for (id, tag, _) in reqs.iter().rev() {
        let v = f64::from(*id);
        let (a, _) = output_shares(&[v, -v, 0.5], u64::from(*id));
        s.handle_bytes(Server::P0, &output(*tag, a), 1);
    }
    for (id, tag, _) in &reqs {
        let v = f64::from(*id);
        let (_, b) = output_shares(&[v, -v, 0.5], u64::from(*id));
        s.handle_bytes(Server::P1, &output(*tag, b), 2);
    }
    let mut got = done(events(&mut s));
    got.sort_by_key(|(id, _)| *id);
    assert_eq!(got.len(), 3);
    for (id, r) in got {
        let v = f64::from(id);
        assert_eq!(r.unwrap(), vec![v, -v, 0.5]);
    }
    // Every seed and every tag is fresh.
    assert_ne!(reqs[0].2, reqs[1].2);
    assert_ne!(reqs[0].1, reqs[1].1);
    assert_ne!(reqs[1].1, reqs[2].1);
}

#[test]
fn wrong_roles_or_deployments_send_nothing_secret() {
    let other = Manifest {
        deployment: "77".repeat(16),
        ..manifest(Role::P1)
    };
    let cases = [
        (manifest(Role::P1), manifest(Role::P0), "swapped"),
        (
            manifest(Role::P0),
            manifest(Role::P0),
            "both URLs reach a P0",
        ),
        (manifest(Role::P0), other, "not one deployment"),
    ];
    for (m0, m1, why) in cases {
        let mut s = ClientSession::new(cfg(), 0).unwrap();
        frames(&mut s, Server::P0);
        frames(&mut s, Server::P1);
        s.handle_bytes(Server::P0, &manifest_frame(&m0), 1);
        s.handle_bytes(Server::P1, &manifest_frame(&m1), 1);
        assert_eq!(s.state(), SessionState::Closed);
        match &events(&mut s)[..] {
            [Event::Closed(ClientError::BadDeployment(m))] => assert!(m.contains(why), "{m}"),
            other => panic!("{why}: {other:?}"),
        }
        let e = s.start_predict(&[0.0; 4], 1, 2).unwrap_err();
        assert_eq!(e.kind(), "bad_deployment");
        assert!(frames(&mut s, Server::P0).is_empty());
        assert!(frames(&mut s, Server::P1).is_empty());
    }
}

#[test]
fn a_batch_over_max_batch_and_bad_input_are_refused_before_sending() {
    let mut s = connected();
    let before = s.bytes_sent();
    let e = s.start_predict(&[0.0; 4 * 9], 9, 0).unwrap_err();
    assert!(
        matches!(&e, ClientError::Input(m) if m.contains("limit of 8")),
        "{e}"
    );
    assert!(matches!(
        s.start_predict(&[0.0; 3], 1, 0),
        Err(ClientError::Input(_))
    ));
    assert!(matches!(
        s.start_predict(&[2.0; 4], 1, 0),
        Err(ClientError::Input(_))
    ));
    assert_eq!(s.bytes_sent(), before);
    assert!(frames(&mut s, Server::P0).is_empty());
    assert!(s.start_predict(&[0.0; 4 * 8], 8, 0).is_ok());
}

#[test]
fn deadlines_are_data_and_late_replies_are_dropped() {
    // The setup: P1 answered, P0 did not.
    let mut s = ClientSession::new(cfg(), 100).unwrap();
    s.handle_bytes(Server::P1, &manifest_frame(&manifest(Role::P1)), 150);
    assert_eq!(s.next_deadline(), Some(1100));
    s.handle_timeout(1099);
    assert_eq!(s.state(), SessionState::Connecting);
    s.handle_timeout(1100);
    match &events(&mut s)[..] {
        [Event::Closed(ClientError::Connection(m))] => {
            assert_eq!(m, "P0 (ws://p0.test:1/v1/ws) did not answer within 1000 ms")
        }
        other => panic!("{other:?}"),
    }

    let mut s = connected();
    let a = s.start_predict(&[0.0; 4], 1, 1000).unwrap();
    let tag_a = sent_tag(&mut s);
    let b = s.start_predict(&[0.0; 4], 1, 1500).unwrap();
    let tag_b = sent_tag(&mut s);
    let c = s.start_predict(&[0.0; 4], 1, 1500).unwrap();
    let tag_c = sent_tag(&mut s);
    assert_eq!(s.next_deadline(), Some(2000));
    // An output does not move a deadline: each prediction has one, from its start.
    let (o0, o1) = output_shares(&[0.0; 3], 1);
    s.handle_bytes(Server::P0, &output(tag_b, o0.clone()), 1600);
    s.handle_bytes(Server::P1, &output(tag_c, o1.clone()), 1600);
    assert_eq!(s.next_deadline(), Some(2000));
    s.handle_timeout(2000);
    let got = done(events(&mut s));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, a);
    assert!(
        matches!(&got[0].1, Err(ClientError::Connection(m)) if m == "neither P0 nor P1 answered within 1000 ms")
    );
    // Late answers to the abandoned request are dropped: outputs, a refusal by tag or by
    // request number.
    s.handle_bytes(Server::P0, &output(tag_a, o0.clone()), 2100);
    s.handle_bytes(Server::P1, &error_frame(tag_a, 0, "busy"), 2100);
    s.handle_bytes(Server::P0, &error_frame(0, a, "busy"), 2100);
    assert!(events(&mut s).is_empty());
    assert_eq!(s.state(), SessionState::Ready);
    // P0 sent its output for b, P1 did not: the error names P1; c the other way round.
    s.handle_timeout(2500);
    let got = done(events(&mut s));
    assert!(
        matches!(&got[..], [(id, Err(ClientError::Connection(m))), (id2, Err(ClientError::Connection(m2)))]
            if *id == b && m == "P1 did not answer within 1000 ms (no output share)"
            && *id2 == c && m2 == "P0 did not answer within 1000 ms (no output share)"),
        "{got:?}"
    );
    // A late output for it is dropped.
    s.handle_bytes(Server::P1, &output(tag_b, o1), 2700);
    assert!(events(&mut s).is_empty());
    assert_eq!(s.state(), SessionState::Ready);
    assert_eq!(s.next_deadline(), None);
}

#[test]
fn server_errors_fail_their_request_or_the_connection() {
    let mut s = connected();
    let a = s.start_predict(&[0.0; 4], 1, 0).unwrap();
    let tag_a = sent_tag(&mut s);
    s.start_predict(&[0.0; 4], 1, 0).unwrap();
    let tag_b = sent_tag(&mut s);
    let c = s.start_predict(&[0.0; 4], 1, 0).unwrap();
    sent_tag(&mut s);
    s.handle_bytes(Server::P0, &error_frame(tag_a, a, "not_ready"), 1);
    s.handle_bytes(Server::P1, &error_frame(tag_b, 0, "session_failed"), 1);
    // A refusal that names the request number only (no tag) also reaches it.
    s.handle_bytes(Server::P0, &error_frame(0, c, "busy"), 1);
    let got = done(events(&mut s));
    let codes: Vec<String> = got
        .iter()
        .map(|(_, r)| match r {
            Err(e @ ClientError::Server { server, .. }) => format!("{server} {e}"),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        codes,
        [
            "P0 P0 refused: scripted not_ready (not_ready)",
            "P1 P1 refused: scripted session_failed (session_failed)",
            "P0 P0 refused: scripted busy (busy)"
        ]
    );
    assert_eq!(s.state(), SessionState::Ready);
    // An error about the connection (no request) closes the session and fails the rest.
    let c = s.start_predict(&[0.0; 4], 1, 0).unwrap();
    s.handle_bytes(Server::P1, &error_frame(0, 0, "idle"), 2);
    let evs = events(&mut s);
    assert!(
        matches!(&evs[..], [Event::Done(id, Err(ClientError::Server { .. })), Event::Closed(_)] if *id == c)
    );
    // A garbage frame is a protocol error.
    let mut s = connected();
    s.handle_bytes(Server::P0, b"definitely not a frame, but long enough", 1);
    assert!(matches!(
        s.close_reason(),
        Some(ClientError::Protocol(m)) if m.starts_with("P0 sent a bad frame")
    ));
}

#[test]
fn a_lost_connection_fails_everything_at_once() {
    let mut s = connected();
    let ids: Vec<u32> = (0..3)
        .map(|_| s.start_predict(&[0.0; 4], 1, 0).unwrap())
        .collect();
    s.handle_closed(Server::P1, Some(1011), "going away");
    let evs = events(&mut s);
    assert_eq!(evs.len(), 4);
    for (e, id) in evs.iter().zip(&ids) {
        assert!(
            matches!(e, Event::Done(got, Err(ClientError::Connection(m))) if got == id && m == "P1 closed the connection (code 1011: going away)")
        );
    }
    assert!(matches!(evs[3], Event::Closed(_)));
    assert!(s.start_predict(&[0.0; 4], 1, 0).is_err());
    // Later failures do not replace the first reason.
    s.handle_io_error(Server::P0, "reset");
    assert!(events(&mut s).is_empty());
}

#[test]
fn cancel_and_close() {
    let mut s = connected();
    let a = s.start_predict(&[0.0; 4], 1, 0).unwrap();
    let tag_a = sent_tag(&mut s);
    let b = s.start_predict(&[0.0; 4], 1, 0).unwrap();
    let tag_b = sent_tag(&mut s);
    let (o0, o1) = output_shares(&[0.0; 3], 3);
    s.handle_bytes(Server::P0, &output(tag_b, o0.clone()), 1);
    assert!(s.cancel(a));
    assert!(s.cancel(b));
    assert!(!s.cancel(b));
    let got = done(events(&mut s));
    assert!(got
        .iter()
        .all(|(_, r)| matches!(r, Err(ClientError::Aborted))));
    // Late replies for both are dropped; the session stays up.
    s.handle_bytes(Server::P0, &output(tag_a, o0), 2);
    s.handle_bytes(Server::P1, &output(tag_b, o1), 2);
    assert!(events(&mut s).is_empty());
    assert_eq!(s.state(), SessionState::Ready);
    frames(&mut s, Server::P0);
    frames(&mut s, Server::P1);
    let c = s.start_predict(&[0.0; 4], 1, 0).unwrap();
    s.close();
    let to0 = frames(&mut s, Server::P0);
    assert_eq!(to0.last().map(|f| f.kind), Some(Kind::Close));
    assert_eq!(
        frames(&mut s, Server::P1).last().map(|f| f.kind),
        Some(Kind::Close)
    );
    let evs = events(&mut s);
    assert!(
        matches!(&evs[..], [Event::Done(id, Err(ClientError::Connection(_))), Event::Closed(_)] if *id == c)
    );
    assert_eq!(s.state(), SessionState::Closed);
}

#[test]
fn the_hello_carries_model_and_api_key() {
    let mut c = cfg();
    c.model = "net".into();
    c.api_key = Some("k-123".into());
    let mut s = ClientSession::new(c, 0).unwrap();
    let f = frames(&mut s, Server::P1).remove(0);
    let h: sotto_wire::Hello = f.parse_json(Kind::Hello).unwrap();
    assert_eq!(
        (h.role, h.model_id.as_str(), h.api_key.as_deref()),
        (Role::Client, "net", Some("k-123"))
    );
    // A refusal of the hello is the server's error.
    s.handle_bytes(Server::P1, &error_frame(0, 0, "unknown_model"), 1);
    assert!(matches!(
        s.close_reason(),
        Some(ClientError::Server {
            code: sotto_wire::ErrorCode::UnknownModel,
            ..
        })
    ));
}

#[test]
fn p1s_unknown_session_waits_for_the_refusal_p0_gave() {
    // P0 refuses a tagged request (here: rate limited) and tells P1 to drop its seed; P1's
    // `unknown_session` may reach the client first. The client reports P0's reason.
    let mut s = connected();
    let a = s.start_predict(&[0.0; 4], 1, 0).unwrap();
    let tag_a = sent_tag(&mut s);
    s.handle_bytes(Server::P1, &error_frame(tag_a, 0, "unknown_session"), 1);
    assert!(events(&mut s).is_empty(), "P1's consequence is held");
    s.handle_bytes(Server::P0, &error_frame(tag_a, a, "rate_limited"), 2);
    let got = done(events(&mut s));
    assert!(
        matches!(&got[..], [(id, Err(ClientError::Server { server, code, .. }))]
            if *id == a && server == "P0" && *code == sotto_wire::ErrorCode::RateLimited),
        "{got:?}"
    );
    // The other order needs no waiting.
    let b = s.start_predict(&[0.0; 4], 1, 10).unwrap();
    let tag_b = sent_tag(&mut s);
    s.handle_bytes(Server::P0, &error_frame(tag_b, b, "rate_limited"), 11);
    let got = done(events(&mut s));
    assert!(
        matches!(&got[..], [(id, Err(ClientError::Server { server, .. }))] if *id == b && server == "P0")
    );
    s.handle_bytes(Server::P1, &error_frame(tag_b, 0, "unknown_session"), 12);
    assert!(events(&mut s).is_empty(), "the late consequence is dropped");
    // P0 silent: P1's refusal is given at the deadline, not a bare timeout.
    let c = s.start_predict(&[0.0; 4], 1, 100).unwrap();
    let tag_c = sent_tag(&mut s);
    s.handle_bytes(Server::P1, &error_frame(tag_c, 0, "unknown_session"), 101);
    s.handle_timeout(1099);
    assert!(events(&mut s).is_empty());
    s.handle_timeout(1100);
    let got = done(events(&mut s));
    assert!(
        matches!(&got[..], [(id, Err(ClientError::Server { server, code, .. }))]
            if *id == c && server == "P1" && *code == sotto_wire::ErrorCode::UnknownSession),
        "{got:?}"
    );
    // Any other P1 error fails the request at once.
    let d = s.start_predict(&[0.0; 4], 1, 2000).unwrap();
    let tag_d = sent_tag(&mut s);
    s.handle_bytes(Server::P1, &error_frame(tag_d, 0, "session_failed"), 2001);
    let got = done(events(&mut s));
    assert!(matches!(&got[..], [(id, Err(_))] if *id == d));
    assert_eq!(s.state(), SessionState::Ready);
}
