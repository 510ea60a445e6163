//! Frames round-trip, and random or mutated bytes never panic the decoder.

use proptest::prelude::*;
use sotto_wire::*;

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        Just(Kind::Hello),
        Just(Kind::Manifest),
        Just(Kind::InputShare),
        Just(Kind::InputSeed),
        Just(Kind::Share),
        Just(Kind::Output),
        Just(Kind::Error),
        Just(Kind::Close),
        Just(Kind::Session),
        Just(Kind::Control),
        Just(Kind::Auth),
        Just(Kind::InputBits),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn round_trip(k in kind(), session in any::<u128>(), step in any::<u32>(), payload in prop::collection::vec(any::<u8>(), 0..300)) {
        let f = Frame { kind: k, session, step, payload };
        prop_assert_eq!(decode(&f.encode(), DEFAULT_MAX_PAYLOAD).expect("valid"), f);
    }

    #[test]
    fn random_and_mutated_bytes_never_panic(junk in prop::collection::vec(any::<u8>(), 0..200),
                                           flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..4),
                                           cut in any::<usize>()) {
        let _ = decode(&junk, DEFAULT_MAX_PAYLOAD);
        let mut b = Frame { kind: Kind::Share, session: 1, step: 2, payload: vec![9; 40] }.encode();
        for (i, v) in flips {
            let i = i % b.len();
            b[i] ^= v;
        }
        if let Ok(f) = decode(&b, DEFAULT_MAX_PAYLOAD) {
            let _ = f.elements(Kind::Share, 5);
            let _ = f.parse_json::<Hello>(Kind::Hello);
        }
        let _ = decode(&b[..cut % b.len()], DEFAULT_MAX_PAYLOAD);
    }
}

#[test]
fn every_malformation_has_its_error() {
    let f = Frame {
        kind: Kind::Output,
        session: 5,
        step: 1,
        payload: vec![0; 16],
    };
    let b = f.encode();
    assert!(matches!(
        decode(&b[..10], 100),
        Err(WireError::Truncated(_))
    ));
    assert!(matches!(
        decode(&b[..40], 100),
        Err(WireError::Truncated(_))
    ));
    assert!(matches!(
        decode(&b, 8),
        Err(WireError::TooLarge { len: 16, limit: 8 })
    ));
    let mut extra = b.clone();
    extra.push(0);
    assert!(matches!(decode(&extra, 100), Err(WireError::Malformed(_))));
    let mut v = b.clone();
    v[4] = 9;
    assert!(matches!(
        decode(&v, 100),
        Err(WireError::Version { found: 9 })
    ));
    let mut k = b.clone();
    k[5] = 200;
    assert!(matches!(decode(&k, 100), Err(WireError::Malformed(_))));
    let mut m = b.clone();
    m[0] = b'X';
    assert!(matches!(decode(&m, 100), Err(WireError::Malformed(_))));
    let mut r = b.clone();
    r[6] = 1;
    assert!(decode(&r, 100).is_err());
    // typed payloads
    let got = decode(&b, 100).expect("valid");
    assert_eq!(
        got.elements(Kind::Output, 2).expect("two elements"),
        vec![0, 0]
    );
    assert!(got.elements(Kind::Output, 3).is_err());
    assert!(got.elements(Kind::Share, 2).is_err(), "kind is checked");
    let hello = Frame::json(
        Kind::Hello,
        1,
        0,
        &Hello {
            role: Role::Client,
            model_id: "network_a".into(),
            api_key: None,
        },
    )
    .expect("encodes");
    let back: Hello = decode(&hello.encode(), 1000)
        .expect("valid")
        .parse_json(Kind::Hello)
        .expect("json");
    assert_eq!(back.model_id, "network_a");
    let bad = Frame {
        kind: Kind::Hello,
        session: 1,
        step: 0,
        payload: b"{not json".to_vec(),
    };
    assert!(bad.parse_json::<Hello>(Kind::Hello).is_err());
    assert!(
        !format!("{got:?}").contains("[0"),
        "Debug hides the payload"
    );
}

#[test]
fn error_codes_round_trip_and_match_the_npm_types() {
    use sotto_wire::{ErrorCode, ErrorPayload};
    for c in ErrorCode::ALL {
        assert_eq!(ErrorCode::parse(c.as_str()), c);
        let json = serde_json::to_string(&c).expect("json");
        assert_eq!(json, format!("\"{}\"", c.as_str()));
        assert_eq!(ErrorPayload::new(c, "m").error_code(), c);
    }
    assert_eq!(ErrorCode::parse("from_a_newer_server"), ErrorCode::Unknown);
    let later: ErrorCode = serde_json::from_str("\"from_a_newer_server\"").expect("other");
    assert_eq!(later, ErrorCode::Unknown);
    // index.d.ts lists exactly these codes in its ErrorCode type.
    let dts = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web/index.d.ts"),
    )
    .expect("web/index.d.ts");
    let start = dts
        .find("export type ErrorCode")
        .expect("index.d.ts declares ErrorCode");
    let decl = &dts[start..start + dts[start..].find(';').expect("end of the type")];
    let mut listed: Vec<&str> = decl.split('\'').skip(1).step_by(2).collect();
    listed.sort_unstable();
    let mut ours: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    ours.sort_unstable();
    assert_eq!(
        listed, ours,
        "index.d.ts's ErrorCode and sotto-wire's differ"
    );
}

fn manifest(role: Role) -> Manifest {
    Manifest {
        model_id: "m".into(),
        input_shape: vec![4],
        frac_bits: 16,
        output_len: 3,
        out_frac: 16,
        softmax_at_client: false,
        input_bound: 1.0,
        role,
        deployment: "ab".repeat(16),
        max_batch: 128,
        input_bits: None,
    }
}

#[test]
fn a_client_accepts_only_p0_then_p1_of_one_deployment() {
    let (p0, p1) = (manifest(Role::P0), manifest(Role::P1));
    assert!(Manifest::check_pair(&p0, &p1).is_ok());
    let refused = |a: &Manifest, b: &Manifest| match Manifest::check_pair(a, b) {
        Err(WireError::NotAPair(m)) => m,
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert!(refused(&p1, &p0).contains("swapped"));
    assert!(refused(&p0, &p0).contains("both URLs reach a P0"));
    assert!(refused(&p1, &p1).contains("both URLs reach a P1"));
    assert!(refused(&manifest(Role::Helper), &p1).contains("says it is Helper"));
    let mut other = p1.clone();
    other.deployment = "cd".repeat(16);
    assert!(refused(&p0, &other).contains("not one deployment"));
    let mut other = p1.clone();
    other.frac_bits = 12;
    assert!(refused(&p0, &other).contains("differently"));
}
