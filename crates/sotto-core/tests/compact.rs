//! The compact comparison mode (`Comparisons::Compact`: one-bit DCF keys and a selection
//! round) against the plaintext twins, with its round and byte counts.

use proptest::prelude::*;
use sotto_core::dcf_bit;
use sotto_core::linear::PoolShape;
use sotto_core::local::{no_client, run_local, LocalRun};
use sotto_core::prg::Prg;
use sotto_core::protocols::{self as p, Comparisons};
use sotto_core::session::{Dealer, Server};
use sotto_core::transport::PartyId;
use sotto_core::{plain, share};

type T = sotto_core::local::LocalTransport;

const COMPACT: Comparisons = Comparisons::Compact;

fn shares(x: &[u64]) -> (Vec<u64>, Vec<u64>) {
    share::share(x, &mut Prg::from_os().expect("os rng"))
}

fn mine<'a>(s: &Server<T>, x: &'a (Vec<u64>, Vec<u64>)) -> &'a [u64] {
    if s.id() == PartyId::P0 {
        &x.0
    } else {
        &x.1
    }
}

fn revealed(run: &LocalRun<Vec<u64>, ()>) -> Vec<u64> {
    share::reveal(&run.p0, &run.p1).expect("same length")
}

/// Signed values with |v| < 2^(bits−1), biased towards the edges ±(2^(bits−1) − 1), 0, ±1.
fn values(n: impl Into<prop::collection::SizeRange>, bits: u32) -> impl Strategy<Value = Vec<u64>> {
    let max = ((1u64 << (bits - 1)) - 1) as i64;
    prop::collection::vec(
        prop_oneof![
            3 => -max..=max,
            1 => Just(0i64),
            1 => Just(-1i64),
            1 => Just(1i64.min(max)),
            1 => Just(max),
            1 => Just(-max),
            1 => (-1000i64).max(-max)..=1000i64.min(max),
        ],
        n,
    )
    .prop_map(|v| v.into_iter().map(|x| x as u64).collect())
}

/// Runs a compact ReLU over `x` and checks it against the twin, its rounds and its bytes.
fn check_relu(x: &[u64], f: u32, bits: u32, helper_first: bool) -> LocalRun<Vec<u64>, ()> {
    let xs = shares(x);
    let n = x.len();
    let run = run_local(
        |mut d: Dealer<T>| async move { p::deal_relu_with(&mut d, n, f, bits, COMPACT).await },
        |mut s: Server<T>| {
            let xs = &xs;
            async move {
                let v = mine(&s, xs).to_vec();
                // the prepared path: material first, then the online part
                let prep = p::prepare_relu_with(&mut s, v.len(), f, bits, COMPACT).await?;
                p::finish_relu(&mut s, prep, &v).await
            }
        },
        no_client,
        helper_first,
    )
    .expect("runs");
    assert_eq!(
        revealed(&run),
        plain::relu(x, f),
        "bits={bits} f={f}: exact"
    );
    // Two rounds with or without a truncation: the opening of the masked input, then one
    // packed bit per element (the sign), or two (the sign and the truncation's carry).
    let n = n as u64;
    let bits_opened = if f == 0 { n } else { 2 * n };
    for (me, peer) in [(0, PartyId::P1), (1, PartyId::P0)] {
        assert_eq!(run.sent[me].messages_to(peer), 2, "bits={bits} f={f}");
        assert_eq!(
            run.sent[me].bytes_to(peer),
            8 * n + bits_opened.div_ceil(8),
            "bits={bits} f={f}"
        );
    }
    run
}

/// ±(2^(bits−1) − 1) (at most ±(2^62 − 1), the ring's bound for comparisons), 0, ±1 and
/// ±half the range.
fn edges(bits: u32) -> Vec<u64> {
    let max = (1u64 << (bits - 1).min(62)) - 1;
    let mut v = vec![
        0,
        u64::MAX,
        1,
        max,
        max.wrapping_neg(),
        max >> 1,
        (max >> 1).wrapping_neg(),
    ];
    v.retain(|&x| {
        let s = x as i64;
        s.unsigned_abs() <= max
    });
    v
}

#[test]
fn compact_relu_edges_at_every_width() {
    for bits in 2u32..=64 {
        let x = edges(bits);
        check_relu(&x, 0, bits, false);
        if bits < 64 {
            for f in [1u32, 7, 19] {
                check_relu(&x, f, bits, false);
            }
        }
    }
}

/// The fused gate reads the sign from `x >> f` (compared at `(c >> f) − 1`): values around
/// every multiple of `2^f` that matters (0, ±2^f, the range's ends) at every width, for
/// shifts from 1 to past the width.
#[test]
fn fused_relu_around_multiples_of_the_shift() {
    for bits in 2u32..=63 {
        let max = (1i64 << (bits - 1).min(62)) - 1;
        let mut fs: Vec<u32> = vec![1, 2, 3, 7, 8, 15, 16, 19, 31, bits - 1, bits, bits + 1];
        fs.retain(|&f| (1..=62).contains(&f));
        fs.sort_unstable();
        fs.dedup();
        for f in fs {
            let q = 1i64 << f.min(62);
            let mut x: Vec<i64> = Vec::new();
            for base in [0, q, -q, 2 * q, -2 * q, max, -max] {
                for d in -2i64..=2 {
                    x.push(base.saturating_add(d));
                }
            }
            x.retain(|v| v.unsigned_abs() <= max as u64);
            let x: Vec<u64> = x.into_iter().map(|v| v as u64).collect();
            check_relu(&x, f, bits, false);
        }
    }
}

/// `n` random values with |x| < 2^39 (the ReLU material tests compare on 40 bits).
fn values_under_40_bits(n: usize) -> Vec<u64> {
    let mut g = Prg::from_os().expect("os rng");
    g.vec_u64(n)
        .iter()
        .map(|v| ((*v as i64) >> 25) as u64)
        .collect()
}

#[test]
fn compact_relu_material_is_the_one_bit_key() {
    // bits = 40 without truncation: P0 receives only the keys (DCFB on
    // shifted_bits(40, 0) − 1 = 40 bits, as the Fast mode compares: 560 bytes each), P1 also
    // [m] and [m·r] (16 bytes per element).
    let n = 1000usize;
    let x = values_under_40_bits(n);
    let run = check_relu(&x, 0, 40, true);
    let key = dcf_bit::key_bytes(p::shifted_bits(40, 0) - 1) as u64;
    assert_eq!(key, 560);
    // seed (32), continuation flag (1), key length (4), key header (12)
    let frame = 32 + 1 + 4 + 12;
    let n = n as u64;
    assert_eq!(run.sent[2].bytes_to(PartyId::P0), frame + n * key);
    assert_eq!(run.sent[2].bytes_to(PartyId::P1), frame + n * (key + 16));
}

#[test]
fn compact_relu_with_truncation_is_one_gate_of_two_one_bit_keys() {
    // bits = 40, f = 16: the sign compared on the high part, fused_sign_bits(40, 16) = 25
    // bits (a 24-bit key, 304 bytes, where the untruncated value's would be 544), and the
    // carry on 16 bits (176 bytes), both keys to both servers; P1 also gets 7 dealt words
    // per element.
    let n = 1000usize;
    let x = values_under_40_bits(n);
    let run = check_relu(&x, 16, 40, true);
    assert_eq!(p::fused_sign_bits(40, 16), 25);
    let keys = (dcf_bit::key_bytes(24) + dcf_bit::key_bytes(16)) as u64;
    assert_eq!(keys, 304 + 176);
    // seed (32), continuation flag (1), per key batch its length (4) and header (12)
    let frame = 32 + 1 + 2 * (4 + 12);
    let n = n as u64;
    assert_eq!(run.sent[2].bytes_to(PartyId::P0), frame + n * keys);
    assert_eq!(run.sent[2].bytes_to(PartyId::P1), frame + n * (keys + 56));
}

#[test]
fn fast_and_compact_gates_mix_in_one_session() {
    let mut g = Prg::from_os().expect("os rng");
    let x: Vec<u64> = g
        .vec_u64(300)
        .iter()
        .map(|v| ((*v as i64) >> 30) as u64)
        .collect();
    let xs = shares(&x);
    let n = x.len();
    let run = run_local(
        |mut d: Dealer<T>| async move {
            p::deal_relu_with(&mut d, n, 3, 36, COMPACT).await?;
            p::deal_relu(&mut d, n, 0, 36).await?;
            p::deal_drelu_with(&mut d, n, 36, COMPACT).await?;
            p::deal_relu_with(&mut d, n, 0, 36, Comparisons::Fast).await
        },
        |mut s: Server<T>| {
            let xs = &xs;
            async move {
                let v = mine(&s, xs).to_vec();
                let a = p::relu_with(&mut s, &v, 3, 36, COMPACT).await?;
                let b = p::relu(&mut s, &v, 0, 36).await?;
                let c = p::drelu_with(&mut s, &v, 36, COMPACT).await?;
                let d = p::relu_with(&mut s, &v, 0, 36, Comparisons::Fast).await?;
                Ok([a, b, c, d].concat())
            }
        },
        no_client,
        false,
    )
    .expect("runs");
    let want = [
        plain::relu(&x, 3),
        plain::relu(&x, 0),
        plain::drelu(&x),
        plain::relu(&x, 0),
    ]
    .concat();
    assert_eq!(revealed(&run), want);
    // 2 + 1 + 2 + 1 rounds
    assert_eq!(run.sent[0].messages_to(PartyId::P1), 6);
}

#[test]
fn a_fast_key_where_a_compact_one_is_expected_is_an_error() {
    let n = 10;
    let r = run_local(
        |mut d: Dealer<T>| async move { p::deal_relu(&mut d, n, 0, 40).await },
        |mut s: Server<T>| async move {
            p::relu_with(&mut s, &[0; 10], 0, 40, COMPACT).await?;
            Ok(Vec::<u64>::new())
        },
        no_client,
        false,
    );
    assert!(r.is_err());
}

fn cfg() -> ProptestConfig {
    ProptestConfig {
        cases: 24,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(cfg())]

    #[test]
    fn compact_relu_matches_twin(bits in prop_oneof![Just(64u32), Just(40u32), Just(28u32), 2u32..64],
                                 x in values(1..200, 63), f in prop_oneof![Just(0u32), Just(19u32), 1u32..40],
                                 helper_first in any::<bool>()) {
        // scale the values (|v| < 2^62) down to |x| < 2^(bits−1)
        let x: Vec<u64> = x.iter().map(|v| ((*v as i64) >> (64 - bits)) as u64).collect();
        check_relu(&x, f, bits, helper_first);
    }

    #[test]
    fn compact_drelu_matches_twin(bits in prop_oneof![Just(64u32), 2u32..64], x in values(1..200, 63)) {
        let x: Vec<u64> = x.iter().map(|v| ((*v as i64) >> (64 - bits)) as u64).collect();
        let xs = shares(&x);
        let n = x.len();
        let run = run_local(
            |mut d: Dealer<T>| async move { p::deal_drelu_with(&mut d, n, bits, COMPACT).await },
            |mut s: Server<T>| { let xs = &xs; async move { let v = mine(&s, xs).to_vec(); p::drelu_with(&mut s, &v, bits, COMPACT).await } },
            no_client, false).expect("runs");
        prop_assert_eq!(revealed(&run), plain::drelu(&x));
        prop_assert_eq!(run.sent[0].messages_to(PartyId::P1), 2);
        prop_assert_eq!(run.sent[1].bytes_to(PartyId::P0), 8 * n as u64 + (n as u64).div_ceil(8));
    }

    #[test]
    fn compact_maxpool_matches_twin(c in 1usize..3, h in 2usize..9, w in 2usize..9, k in 2usize..4, st in 1usize..3,
                                    seed in values(1, 40), bits in prop_oneof![Just(64u32), Just(42u32)],
                                    prepared in any::<bool>()) {
        let shape = PoolShape { batch: 1, channels: c, height: h.max(k), width: w.max(k),
            kernel_h: k, kernel_w: k, stride_h: st, stride_w: st };
        let mut g = Prg::from_os().expect("os rng");
        let x: Vec<u64> = g.vec_u64(shape.in_len()).iter().map(|v| ((*v as i64) >> 24) as u64 ^ seed[0]).collect();
        let xs = shares(&x);
        let run = run_local(
            |mut d: Dealer<T>| async move { p::deal_maxpool_with(&mut d, &shape, bits, COMPACT).await },
            |mut s: Server<T>| { let xs = &xs; async move {
                let v = mine(&s, xs).to_vec();
                if prepared {
                    let prep = p::prepare_maxpool_with(&mut s, &shape, bits, COMPACT).await?;
                    p::finish_maxpool(&mut s, prep, &v).await
                } else {
                    p::maxpool_with(&mut s, &v, &shape, bits, COMPACT).await
                }
            } },
            no_client, prepared).expect("runs");
        prop_assert_eq!(revealed(&run), plain::maxpool(&x, &shape).expect("fits"));
        prop_assert_eq!(run.sent[0].messages_to(PartyId::P1),
                        u64::from(2 * p::max_tree_rounds(k * k)), "two rounds per tree level");
    }
}

/// The protocol futures stay `Send` (servers spawn them on multi-threaded runtimes): a
/// compile-time check, never run.
#[allow(dead_code)]
fn futures_are_send(s: &mut Server<T>, d: &mut Dealer<T>, shape: &PoolShape) {
    fn is_send<F: Send>(_: F) {}
    is_send(p::relu(s, &[], 0, 40));
    is_send(p::relu_with(s, &[], 0, 40, COMPACT));
    is_send(p::drelu_with(s, &[], 40, COMPACT));
    is_send(p::maxpool_with(s, &[], shape, 40, COMPACT));
    is_send(p::prepare_maxpool_with(s, shape, 40, COMPACT));
    is_send(p::prepare_relu_with(s, 1, 0, 40, COMPACT));
    is_send(p::deal_relu_with(d, 1, 0, 40, COMPACT));
    is_send(p::deal_maxpool_with(d, shape, 40, COMPACT));
}
