//! The fused ReLU-and-dense gate (`relu_dense`: a truncating ReLU whose output feeds a private
//! dense product, the product made local by dealt shares of the ReLU's dealt words times the
//! weight mask's rows) against the plaintext twins, with its rounds and bytes.

use proptest::prelude::*;
use sotto_core::linear::Bilinear;
use sotto_core::local::{no_client, run_local, LocalRun};
use sotto_core::prg::Prg;
use sotto_core::protocols as p;
use sotto_core::session::{Dealer, Server};
use sotto_core::transport::PartyId;
use sotto_core::{plain, share};

type T = sotto_core::local::LocalTransport;

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

/// Loads `w` as a private weight and runs `relu_dense` on `x` (prepared first, or in one call
/// when `prepared` is false); checks the result against the twin (ReLU then product), and
/// the online rounds and bytes: the weight's opening, then the ReLU's two openings and
/// nothing for the product.
fn check(
    x: &[u64],
    w: &[u64],
    op: Bilinear,
    f: u32,
    bits: u32,
    prepared: bool,
) -> LocalRun<Vec<u64>, ()> {
    let xs = shares(x);
    let ws = shares(w);
    let wlen = w.len();
    let run = run_local(
        |mut d: Dealer<T>| async move {
            let mask = p::deal_weight_mask(&mut d, wlen).await?;
            p::deal_relu_dense(&mut d, f, bits, &op, &mask).await
        },
        |mut s: Server<T>| {
            let (xs, ws) = (&xs, &ws);
            async move {
                let wv = mine(&s, ws).to_vec();
                let pw = p::load_private_weight(&mut s, &wv).await?;
                let v = mine(&s, xs).to_vec();
                if prepared {
                    let prep = p::prepare_relu_dense(&mut s, f, bits, &op, &pw).await?;
                    p::finish_relu_dense(&mut s, prep, &v, &pw).await
                } else {
                    p::relu_dense(&mut s, &v, f, bits, &op, &pw).await
                }
            }
        },
        no_client,
        prepared,
    )
    .expect("runs");
    let twin = plain::bilinear(&op, &plain::relu(x, f), w).expect("fits");
    assert_eq!(
        share::reveal(&run.p0, &run.p1).expect("same length"),
        twin,
        "{op:?} f={f} bits={bits}: exact"
    );
    let n = x.len() as u64;
    for (me, peer) in [(0, PartyId::P1), (1, PartyId::P0)] {
        assert_eq!(run.sent[me].messages_to(peer), 1 + 2, "{op:?}: rounds");
        assert_eq!(
            run.sent[me].bytes_to(peer),
            8 * wlen as u64 + 8 * n + (2 * n).div_ceil(8),
            "{op:?}: online bytes"
        );
    }
    run
}

/// Signed values with |v| < 2^(bits−1), with the edges ±(2^(bits−1) − 1), 0, ±1 mixed in.
fn values(n: usize, bits: u32, g: &mut Prg) -> Vec<u64> {
    let max = (1u64 << (bits - 1).min(62)) - 1;
    g.vec_u64(n)
        .into_iter()
        .enumerate()
        .map(|(i, r)| match (r >> 60) % 8 {
            0 => 0,
            1 => 1,
            2 => u64::MAX,
            3 => max,
            4 => max.wrapping_neg(),
            _ => {
                let v = ((r as i64) >> (64 - bits.min(63))) as u64;
                v ^ (i as u64 & 1)
            }
        })
        .map(|v| {
            let s = v as i64;
            if s.unsigned_abs() > max {
                0
            } else {
                v
            }
        })
        .collect()
}

#[test]
fn relu_dense_at_the_edges() {
    let mut g = Prg::from_os().expect("os rng");
    for (bits, f) in [
        (2u32, 1u32),
        (20, 16),
        (40, 19),
        (63, 1),
        (64, 16),
        (64, 62),
    ] {
        let op = Bilinear::MatMul { m: 2, k: 9, n: 3 };
        let max = (1u64 << (bits - 1).min(62)) - 1;
        let mut x: Vec<u64> = [0, 1, u64::MAX, max, max.wrapping_neg(), max >> 1, 2, 3, 4]
            .into_iter()
            .map(|v: u64| {
                if (v as i64).unsigned_abs() > max {
                    0
                } else {
                    v
                }
            })
            .collect();
        x.extend(values(9, bits, &mut g));
        let w = g.vec_u64(27);
        check(&x, &w, op, f, bits, true);
    }
}

#[test]
fn helper_material_is_the_fused_gate_and_seven_products_per_weight() {
    let mut g = Prg::from_os().expect("os rng");
    let (m, k, o) = (3usize, 16usize, 5usize);
    let op = Bilinear::MatMul { m, k, n: o };
    let x = values(m * k, 30, &mut g);
    let w = g.vec_u64(k * o);
    let run = check(&x, &w, op, 16, 30, true);
    // What a fused ReLU alone sends P1 (measured the same way), plus 7·m·k·o words.
    let xs = shares(&x);
    let relu = run_local(
        |mut d: Dealer<T>| async move {
            p::deal_relu_with(&mut d, m * k, 16, 30, p::Comparisons::Compact).await
        },
        |mut s: Server<T>| {
            let xs = &xs;
            async move {
                let v = mine(&s, xs).to_vec();
                p::relu_with(&mut s, &v, 16, 30, p::Comparisons::Compact).await
            }
        },
        no_client,
        true,
    )
    .expect("runs");
    let helper = |r: &LocalRun<Vec<u64>, ()>| r.sent[2].bytes_to(PartyId::P1);
    // (the weight mask's gate carries one flag byte and no material)
    assert_eq!(helper(&run) - 1, helper(&relu) + 8 * 7 * (m * k * o) as u64);
}

#[test]
fn a_convolution_or_a_mask_of_another_shape_is_refused() {
    let conv = Bilinear::Conv2d(sotto_core::linear::Conv2dShape {
        batch: 1,
        in_channels: 1,
        height: 3,
        width: 3,
        out_channels: 1,
        kernel_h: 2,
        kernel_w: 2,
        stride_h: 1,
        stride_w: 1,
        pad_top: 0,
        pad_left: 0,
        pad_bottom: 0,
        pad_right: 0,
    });
    let r = run_local(
        |mut d: Dealer<T>| async move {
            let mask = p::deal_weight_mask(&mut d, 4).await?;
            p::deal_relu_dense(&mut d, 16, 30, &conv, &mask).await
        },
        |_s: Server<T>| async move { Ok(Vec::<u64>::new()) },
        no_client,
        true,
    );
    assert!(r.is_err(), "a convolution is not a dense product");
    let op = Bilinear::MatMul { m: 1, k: 4, n: 2 };
    let r = run_local(
        |mut d: Dealer<T>| async move {
            let mask = p::deal_weight_mask(&mut d, 7).await?;
            p::deal_relu_dense(&mut d, 16, 30, &op, &mask).await
        },
        |_s: Server<T>| async move { Ok(Vec::<u64>::new()) },
        no_client,
        true,
    );
    assert!(r.is_err(), "a mask of 7 elements for a 4×2 weight");
}

#[test]
fn a_plain_fused_relu_where_the_fused_product_is_dealt_is_an_error() {
    let op = Bilinear::MatMul { m: 1, k: 8, n: 4 };
    let r = run_local(
        |mut d: Dealer<T>| async move {
            let mask = p::deal_weight_mask(&mut d, 32).await?;
            p::deal_relu_dense(&mut d, 16, 30, &op, &mask).await
        },
        |mut s: Server<T>| async move {
            let w = vec![0u64; 32];
            let _pw = p::load_private_weight(&mut s, &w).await?;
            p::relu_with(&mut s, &[0; 8], 16, 30, p::Comparisons::Compact).await
        },
        no_client,
        true,
    );
    assert!(r.is_err());
}

#[test]
fn the_dealt_word_is_opened_by_both_servers() {
    for v in [0u64, 1, u64::MAX] {
        let run = run_local(
            |mut d: Dealer<T>| async move { p::deal_word(&mut d, v).await },
            |mut s: Server<T>| async move { Ok(vec![p::open_dealt_word(&mut s).await?]) },
            no_client,
            false,
        )
        .expect("runs");
        assert_eq!((run.p0[0], run.p1[0]), (v, v));
        assert_eq!(run.sent[0].messages_to(PartyId::P1), 1);
    }
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
    fn relu_dense_matches_twin(m in 1usize..4, k in 1usize..40, o in 1usize..24,
                               bits in prop_oneof![Just(64u32), Just(40u32), Just(28u32), 2u32..64],
                               f in prop_oneof![Just(16u32), Just(19u32), 1u32..40],
                               small_weights in any::<bool>(), prepared in any::<bool>()) {
        let mut g = Prg::from_os().expect("os rng");
        let x = values(m * k, bits, &mut g);
        let w: Vec<u64> = if small_weights {
            g.vec_u64(k * o).iter().map(|v| ((*v as i64) >> 44) as u64).collect()
        } else {
            g.vec_u64(k * o)
        };
        check(&x, &w, Bilinear::MatMul { m, k, n: o }, f, bits, prepared);
    }
}

/// The protocol futures stay `Send` (servers spawn them on multi-threaded runtimes): a
/// compile-time check, never run.
#[allow(dead_code)]
fn futures_are_send(
    s: &mut Server<T>,
    d: &mut Dealer<T>,
    op: &Bilinear,
    w: &p::PrivateWeight,
    mask: &p::WeightMask,
) {
    fn is_send<F: Send>(_: F) {}
    is_send(p::relu_dense(s, &[], 16, 40, op, w));
    is_send(p::prepare_relu_dense(s, 16, 40, op, w));
    is_send(p::deal_relu_dense(d, 16, 40, op, mask));
    is_send(p::open_dealt_word(s));
    is_send(p::deal_word(d, 1));
}
