//! Every protocol against its plaintext twin on random shapes and values.

use proptest::prelude::*;
use sotto_core::linear::{conv_weight_matrix, Bilinear, Conv2dShape, PoolShape};
use sotto_core::local::{no_client, run_local, LocalRun};
use sotto_core::prg::Prg;
use sotto_core::protocols as p;
use sotto_core::session::{Dealer, Server};
use sotto_core::transport::PartyId;
use sotto_core::{plain, ring, share, Result};

type T = sotto_core::local::LocalTransport;

fn rng() -> Prg {
    Prg::from_os().expect("os rng")
}

fn shares(x: &[u64]) -> (Vec<u64>, Vec<u64>) {
    share::share(x, &mut rng())
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

/// Signed values with |v| < 2^bits, biased towards edges.
fn values(n: impl Into<prop::collection::SizeRange>, bits: u32) -> impl Strategy<Value = Vec<u64>> {
    let max = (1i64 << bits) - 1;
    prop::collection::vec(
        prop_oneof![
            3 => -max..=max,
            1 => Just(0i64),
            1 => Just(-1i64),
            1 => Just(1i64),
            1 => Just(max),
            1 => Just(-max),
            1 => -1000i64..1000,
        ],
        n,
    )
    .prop_map(|v| v.into_iter().map(|x| x as u64).collect())
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
    fn truncate_matches_twin(x in values(1..200, 62), f in prop_oneof![Just(0u32), 1u32..63]) {
        let xs = shares(&x);
        let n = x.len();
        let run = run_local(
            |mut d: Dealer<T>| async move { p::deal_truncate(&mut d, n, f).await },
            |mut s: Server<T>| { let xs = &xs; async move { let v = mine(&s, xs).to_vec(); p::truncate(&mut s, &v, f).await } },
            no_client, false).expect("runs");
        prop_assert_eq!(revealed(&run), plain::truncate(&x, f), "exact, bit for bit");
        prop_assert_eq!(run.sent[0].messages_to(PartyId::P1), 1, "one round");
    }

    #[test]
    fn lift_matches_twin_for_any_input(x in proptest::collection::vec(any::<u64>(), 1..200), k in 2u32..=p::MAX_LIFT_BITS, small in any::<bool>()) {
        // Any 64-bit value an honest client's encoding wraps, or (half the cases) values
        // within the range.
        let x: Vec<u64> = if small {
            x.iter().map(|v| ((*v as i64) >> (65 - k)) as u64).collect()
        } else {
            x
        };
        let (to_p0, seed) = share::share_input_bits(&x, k).expect("os rng");
        let xs = (
            share::decode_bits(&to_p0, x.len(), k).expect("decodes"),
            share::expand_seed_bits(&seed, x.len(), k),
        );
        let n = x.len();
        let run = run_local(
            |mut d: Dealer<T>| async move { p::deal_lift(&mut d, n, k).await },
            |mut s: Server<T>| { let xs = &xs; async move { let v = mine(&s, xs).to_vec(); p::lift(&mut s, &v, k).await } },
            no_client, false).expect("runs");
        let out = revealed(&run);
        prop_assert_eq!(&out, &plain::lift(&x, k), "exact, bit for bit");
        if small {
            prop_assert_eq!(&out, &x, "values within the range are unchanged");
        }
        prop_assert_eq!(run.sent[0].messages_to(PartyId::P1), 1, "one round");
    }

    #[test]
    fn lift_bounds_whatever_a_client_sends(words in proptest::collection::vec((any::<u64>(), any::<u64>()), 1..200), k in 2u32..=p::MAX_LIFT_BITS) {
        // A malicious client picks both servers' words freely (the low parts' additive
        // shares, the top bits' and the wrap bit's XOR shares): the value is
        // x0 + x1 − 2^l·w + 2^l·(h0 ⊕ h1) − 2^(k−1), within ±lift_bound(k), whatever the masks.
        let keep = (1u64 << (k + 1)) - 1;
        let l = k - share::xor_bits(k);
        let lo = (1u64 << l) - 1;
        let xs: (Vec<u64>, Vec<u64>) = words.iter().map(|(a, b)| (a & keep, b & keep)).unzip();
        let want: Vec<u64> = xs.0.iter().zip(&xs.1).map(|(a, b)| {
            let w = ((a ^ b) >> k) & 1;
            let high = ((a ^ b) & ((1u64 << k) - 1)) >> l;
            ((a & lo) as i64 + (b & lo) as i64 - ((w << l) as i64) + ((high << l) as i64) - (1i64 << (k - 1))) as u64
        }).collect();
        let n = words.len();
        let run = run_local(
            |mut d: Dealer<T>| async move { p::deal_lift(&mut d, n, k).await },
            |mut s: Server<T>| { let xs = &xs; async move { let v = mine(&s, xs).to_vec(); p::lift(&mut s, &v, k).await } },
            no_client, false).expect("runs");
        let out = revealed(&run);
        prop_assert_eq!(&out, &want, "the value the words encode, bit for bit");
        let bound = p::lift_bound(k) as i64;
        prop_assert!(out.iter().all(|v| (-bound..=bound).contains(&(*v as i64))), "within ±lift_bound(k)");
        prop_assert_eq!(run.sent[0].messages_to(PartyId::P1), 1, "one round");
    }

    #[test]
    fn drelu_matches_twin(x in values(1..200, 62), bits in prop_oneof![Just(64u32), 2u32..64]) {
        let x: Vec<u64> = x.iter().map(|v| ((*v as i64) >> (64 - bits)) as u64).collect();
        let xs = shares(&x);
        let n = x.len();
        let run = run_local(
            |mut d: Dealer<T>| async move { p::deal_drelu(&mut d, n, bits).await },
            |mut s: Server<T>| { let xs = &xs; async move { let v = mine(&s, xs).to_vec(); p::drelu(&mut s, &v, bits).await } },
            no_client, false).expect("runs");
        prop_assert_eq!(revealed(&run), plain::drelu(&x));
        prop_assert_eq!(run.sent[0].bytes_to(PartyId::P1), 8 * n as u64);
    }

    #[test]
    fn relu_matches_twin(x in values(1..200, 62), f in prop_oneof![Just(0u32), 1u32..40],
                         bits in prop_oneof![Just(64u32), 20u32..64]) {
        let x: Vec<u64> = x.iter().map(|v| ((*v as i64) >> (64 - bits)) as u64).collect();
        let xs = shares(&x);
        let n = x.len();
        let run = run_local(
            |mut d: Dealer<T>| async move { p::deal_relu(&mut d, n, f, bits).await },
            |mut s: Server<T>| { let xs = &xs; async move { let v = mine(&s, xs).to_vec(); p::relu(&mut s, &v, f, bits).await } },
            no_client, false).expect("runs");
        prop_assert_eq!(revealed(&run), plain::relu(&x, f), "exact, bit for bit");
        // one opening; a truncation first takes a second one
        let rounds = if f == 0 { 1 } else { 2 };
        prop_assert_eq!(run.sent[0].messages_to(PartyId::P1), rounds);
        prop_assert_eq!(run.sent[1].bytes_to(PartyId::P0), 8 * rounds * n as u64, "64 bits per element per opening");
    }

    #[test]
    fn private_matmul_matches_twin(m in 1usize..5, k in 1usize..40, n in 1usize..20, seed in any::<u64>()) {
        let mut g = rng();
        let x: Vec<u64> = g.vec_u64(m * k);
        let w: Vec<u64> = g.vec_u64(k * n).iter().map(|v| v ^ seed).collect();
        let op = Bilinear::MatMul { m, k, n };
        let (xs, ws) = (shares(&x), shares(&w));
        let run = run_local(
            |mut d: Dealer<T>| async move {
                let mask = p::deal_weight_mask(&mut d, k * n).await?;
                p::deal_bilinear_private(&mut d, &op, &mask).await?;
                p::deal_bilinear_private(&mut d, &op, &mask).await
            },
            |mut s: Server<T>| { let (xs, ws) = (&xs, &ws); async move {
                let wm = mine(&s, ws).to_vec();
                let pw = p::load_private_weight(&mut s, &wm).await?;
                let v = mine(&s, xs).to_vec();
                let a = p::bilinear_private(&mut s, &op, &v, &pw).await?;
                let b = p::bilinear_private(&mut s, &op, &v, &pw).await?;
                Ok::<_, sotto_core::CoreError>(ring::sub(&a, &b)?.into_iter().chain(a).collect::<Vec<u64>>())
            } },
            no_client, false).expect("runs");
        let out = revealed(&run);
        let (zero, z) = out.split_at(m * n);
        prop_assert!(zero.iter().all(|&v| v == 0), "two queries agree");
        prop_assert_eq!(z.to_vec(), plain::bilinear(&op, &x, &w).expect("fits"));
    }

    #[test]
    fn private_conv_matches_twin(c in 1usize..3, h in 3usize..8, w in 3usize..8, o in 1usize..4,
                                 kh in 1usize..4, kw in 1usize..4, st in 1usize..3, pad in 0usize..2) {
        let s = Conv2dShape { batch: 2, in_channels: c, height: h, width: w, out_channels: o,
            kernel_h: kh.min(h), kernel_w: kw.min(w), stride_h: st, stride_w: st,
            pad_top: pad, pad_left: pad, pad_bottom: pad, pad_right: pad };
        let op = Bilinear::Conv2d(s);
        let mut g = rng();
        let x = g.vec_u64(op.x_len());
        let wt = conv_weight_matrix(&g.vec_u64(op.w_len()), &s).expect("fits");
        let (xs, ws) = (shares(&x), shares(&wt));
        let run = run_local(
            |mut d: Dealer<T>| async move {
                let mask = p::deal_weight_mask(&mut d, op.w_len()).await?;
                p::deal_bilinear_private(&mut d, &op, &mask).await
            },
            |mut srv: Server<T>| { let (xs, ws) = (&xs, &ws); async move {
                let wm = mine(&srv, ws).to_vec();
                let pw = p::load_private_weight(&mut srv, &wm).await?;
                let v = mine(&srv, xs).to_vec();
                p::bilinear_private(&mut srv, &op, &v, &pw).await
            } },
            no_client, false).expect("runs");
        prop_assert_eq!(revealed(&run), plain::bilinear(&op, &x, &wt).expect("fits"));
        // Public weights: local and exact.
        let y0 = p::bilinear_public(&op, &xs.0, &wt).expect("fits");
        let y1 = p::bilinear_public(&op, &xs.1, &wt).expect("fits");
        prop_assert_eq!(share::reveal(&y0, &y1).expect("len"), plain::bilinear(&op, &x, &wt).expect("fits"));
    }

    #[test]
    fn private_grouped_conv_matches_twin_and_the_block_diagonal_conv(groups in 1usize..5, cg in 1usize..3, og in 1usize..3,
                                 h in 3usize..7, k in 1usize..4, st in 1usize..3, pad in 0usize..2) {
        let g1 = Conv2dShape { batch: 2, in_channels: cg, height: h, width: h + 1, out_channels: og,
            kernel_h: k.min(h), kernel_w: k.min(h), stride_h: st, stride_w: st,
            pad_top: pad, pad_left: 0, pad_bottom: 0, pad_right: pad };
        let op = Bilinear::GroupedConv2d { group: g1, groups };
        let mut g = rng();
        let x = g.vec_u64(op.x_len());
        // Weights [O, C_g, kh, kw]; each group's matrix [C_g·kh·kw, O_g] in turn.
        let w4 = g.vec_u64(op.w_len());
        let per = og * g1.patch_len();
        let wt: Vec<u64> = w4.chunks(per)
            .flat_map(|wg| conv_weight_matrix(wg, &g1).expect("fits"))
            .collect();
        // The same function as a full convolution whose weights are zero outside each group.
        let full = Conv2dShape { in_channels: cg * groups, out_channels: og * groups, ..g1 };
        let kk = g1.kernel_h * g1.kernel_w;
        let mut wfull = vec![0u64; full.patch_len() * full.out_channels];
        for o in 0..full.out_channels {
            let gr = o / og;
            for ci in 0..cg {
                let src = (o * cg + ci) * kk;
                let dst = (o * full.in_channels + gr * cg + ci) * kk;
                wfull[dst..dst + kk].copy_from_slice(&w4[src..src + kk]);
            }
        }
        let want = plain::bilinear(&Bilinear::Conv2d(full), &x,
            &conv_weight_matrix(&wfull, &full).expect("fits")).expect("fits");
        prop_assert_eq!(plain::bilinear(&op, &x, &wt).expect("fits"), want.clone());
        let (xs, ws) = (shares(&x), shares(&wt));
        let run = run_local(
            |mut d: Dealer<T>| async move {
                let mask = p::deal_weight_mask(&mut d, op.w_len()).await?;
                p::deal_bilinear_private(&mut d, &op, &mask).await
            },
            |mut srv: Server<T>| { let (xs, ws) = (&xs, &ws); async move {
                let wm = mine(&srv, ws).to_vec();
                let pw = p::load_private_weight(&mut srv, &wm).await?;
                let v = mine(&srv, xs).to_vec();
                p::bilinear_private(&mut srv, &op, &v, &pw).await
            } },
            no_client, false).expect("runs");
        prop_assert_eq!(revealed(&run), want);
    }

    #[test]
    fn maxpool_matches_twin(c in 1usize..3, h in 2usize..9, w in 2usize..9, k in 2usize..4, st in 1usize..3, seed in values(1, 40),
                            bits in prop_oneof![Just(64u32), Just(42u32)]) {
        let shape = PoolShape { batch: 1, channels: c, height: h.max(k), width: w.max(k),
            kernel_h: k, kernel_w: k, stride_h: st, stride_w: st };
        let mut g = rng();
        let x: Vec<u64> = g.vec_u64(shape.in_len()).iter().map(|v| ((*v as i64) >> 24) as u64 ^ seed[0]).collect();
        let xs = shares(&x);
        let run = run_local(
            |mut d: Dealer<T>| async move { p::deal_maxpool(&mut d, &shape, bits).await },
            |mut s: Server<T>| { let xs = &xs; async move { let v = mine(&s, xs).to_vec(); p::maxpool(&mut s, &v, &shape, bits).await } },
            no_client, false).expect("runs");
        prop_assert_eq!(revealed(&run), plain::maxpool(&x, &shape).expect("fits"));
        prop_assert_eq!(run.sent[0].messages_to(PartyId::P1), u64::from(p::max_tree_rounds(k * k)));
    }

    #[test]
    fn avgpool_matches_twin(c in 1usize..3, h in 2usize..9, w in 2usize..9, k in 1usize..4, x in values(200, 36)) {
        let shape = PoolShape::square(1, c, h.max(k), w.max(k), k);
        let x: Vec<u64> = x.iter().cycle().take(shape.in_len()).copied().collect();
        let xs = shares(&x);
        let run = run_local(
            |mut d: Dealer<T>| async move { p::deal_avgpool(&mut d, &shape).await },
            |mut s: Server<T>| { let xs = &xs; async move { let v = mine(&s, xs).to_vec(); p::avgpool(&mut s, &v, &shape).await } },
            no_client, false).expect("runs");
        prop_assert_eq!(revealed(&run), plain::avgpool(&x, &shape).expect("fits"));
    }

    #[test]
    fn argmax_matches_twin(rows in 1usize..6, classes in 1usize..17, x in values(200, 40)) {
        let x: Vec<u64> = x.iter().cycle().take(rows * classes).copied().collect();
        let xs = shares(&x);
        let run = run_local(
            |mut d: Dealer<T>| async move { p::deal_argmax(&mut d, rows, classes).await },
            |mut s: Server<T>| { let xs = &xs; async move { let v = mine(&s, xs).to_vec(); p::argmax(&mut s, &v, rows, classes).await } },
            no_client, false).expect("runs");
        let k = p::argmax_bits(classes);
        let got: Vec<u64> = revealed(&run).iter().map(|v| v & ((1 << k) - 1)).collect();
        prop_assert_eq!(got, plain::argmax(&x, rows, classes).expect("fits"));
    }

    #[test]
    fn sigmoid_and_tanh_match_twins(x in values(1..100, 42)) {
        // inputs with 32 fractional bits (a product before truncation), |x| < 2^10
        let xs = shares(&x);
        let n = x.len();
        let run = run_local(
            |mut d: Dealer<T>| async move { p::deal_sigmoid(&mut d, n, 32, 16).await?; p::deal_tanh(&mut d, n, 32, 16).await },
            |mut s: Server<T>| { let xs = &xs; async move {
                let v = mine(&s, xs).to_vec();
                let a = p::sigmoid(&mut s, &v, 32, 16).await?;
                let b = p::tanh(&mut s, &v, 32, 16).await?;
                Ok::<_, sotto_core::CoreError>([a, b].concat())
            } },
            no_client, false).expect("runs");
        let out = revealed(&run);
        prop_assert_eq!(&out[..n], &plain::sigmoid(&x, 32, 16).expect("valid")[..], "sigmoid");
        prop_assert_eq!(&out[n..], &plain::tanh(&x, 32, 16).expect("valid")[..], "tanh");
        // and the twin approximates the real functions
        for (i, v) in x.iter().enumerate() {
            let real = (*v as i64) as f64 / 2f64.powi(32);
            let s = (out[i] as i64) as f64 / 65536.0;
            let t = (out[n + i] as i64) as f64 / 65536.0;
            prop_assert!((s - 1.0 / (1.0 + (-real).exp())).abs() < 0.01, "sigmoid({real}) = {s}");
            prop_assert!((t - real.tanh()).abs() < 0.02, "tanh({real}) = {t}");
        }
    }
}

#[test]
fn truncation_over_a_million_edge_values_is_exact() {
    let n = 1_000_000;
    let mut g = rng();
    // |x| just below 2^62, the edge of the bit budget, and both signs
    let x: Vec<u64> = g
        .vec_u64(n)
        .iter()
        .map(|v| {
            let mag = (1i64 << 62) - 1 - (v >> 44) as i64;
            (if v & 1 == 0 { mag } else { -mag }) as u64
        })
        .collect();
    let xs = shares(&x);
    for f in [12u32, 16, 32] {
        let run = run_local(
            |mut d: Dealer<T>| async move { p::deal_truncate(&mut d, n, f).await },
            |mut s: Server<T>| {
                let xs = &xs;
                async move {
                    let v = mine(&s, xs).to_vec();
                    p::truncate(&mut s, &v, f).await
                }
            },
            no_client,
            false,
        )
        .expect("runs");
        let got = revealed(&run);
        let want = plain::truncate(&x, f);
        let wrong = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        assert_eq!(
            wrong, 0,
            "f = {f}: {wrong} of {n} truncations differ from the floor"
        );
    }
}

/// The leak the exact truncation closes (PROTOCOLS §6): with the carry dropped, a value with
/// fraction 0.8 rounded up in about 80 % of sessions, so repeating a query told the client
/// sub-ulp parts of hidden values. Now 100 sessions on the same shares-of-x give one output.
#[test]
fn repeating_an_input_gives_one_output_whatever_the_masks() {
    let f = 16;
    let n = 400;
    let mut g = rng();
    // values with fraction 0.8 (and a few others), both signs, in the range of a layer output
    let x: Vec<u64> = g
        .vec_u64(n)
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let int = ((v >> 40) as i64) - (1 << 23);
            let frac = if i % 4 == 0 {
                (v & 0xffff) as i64
            } else {
                52_429
            }; // 0.8 · 2^16
            ((int << f) + frac) as u64
        })
        .collect();
    let want = plain::relu(&x, f);
    for session in 0..100 {
        // fresh shares of x and fresh masks in every session
        let xs = shares(&x);
        let run = run_local(
            |mut d: Dealer<T>| async move { p::deal_relu(&mut d, n, f, 48).await },
            |mut s: Server<T>| {
                let xs = &xs;
                async move {
                    let v = mine(&s, xs).to_vec();
                    p::relu(&mut s, &v, f, 48).await
                }
            },
            no_client,
            false,
        )
        .expect("runs");
        assert_eq!(revealed(&run), want, "session {session} differs");
    }
}

#[test]
fn client_input_and_output_round_trip_with_rerandomised_shares() {
    let x: Vec<u64> = vec![5, u64::MAX, 1 << 40, 0];
    let n = x.len();
    let run = run_local(
        |mut d: Dealer<T>| async move { p::deal_output(&mut d, n).await },
        |mut s: Server<T>| async move {
            let v = s.receive_input(n).await?;
            p::output(&mut s, &v, 64).await?;
            Ok(v)
        },
        |t: T, session| {
            let x = x.clone();
            async move {
                sotto_core::session::client_send_input(&t, session, &x).await?;
                sotto_core::session::client_receive_output(&t, session, n, 64).await
            }
        },
        false,
    )
    .expect("runs");
    assert_eq!(run.client, x);
    // P1 received only a 32-byte seed from the client.
    assert_eq!(run.sent[3].bytes_to(PartyId::P1), 32);
    assert_eq!(run.sent[3].bytes_to(PartyId::P0), 8 * n as u64);
}

#[test]
fn material_in_parts_gives_the_same_result() {
    // A gate's material larger than a link's message limit goes in parts; here parts of a
    // few kilobytes. Parts of 1 byte would be more parts than a gate may have: refused
    // before anything is sent.
    let x: Vec<u64> = rng().vec_u64(300).iter().map(|v| v >> 20).collect();
    let want = plain::relu(&x, 7);
    for part in [1usize, 2000, 4096, 1 << 30] {
        let xs = shares(&x);
        let run = run_local(
            |mut d: Dealer<T>| async move {
                d.set_material_part(part);
                p::deal_relu(&mut d, 300, 7, 45).await
            },
            |mut s: Server<T>| {
                let xs = &xs;
                async move {
                    let v = mine(&s, xs).to_vec();
                    p::relu(&mut s, &v, 7, 45).await
                }
            },
            no_client,
            false,
        );
        match run {
            Ok(run) => {
                assert!(part > 1, "a gate of 1-byte parts has too many parts");
                assert_eq!(revealed(&run), want, "parts of {part} bytes");
                // Parts are messages of their own: P1 got more of them with small parts.
                if part == 2000 {
                    assert!(run.sent[2].messages_to(PartyId::P1) > 100);
                }
            }
            Err(e) => {
                assert_eq!(part, 1, "parts of {part} bytes failed: {e}");
                assert!(e.to_string().contains("parts"), "{e}");
            }
        }
    }
}

#[test]
fn wrong_shapes_are_errors_not_panics() {
    let run: Result<LocalRun<Vec<u64>, ()>> = run_local(
        |mut d: Dealer<T>| async move { p::deal_relu(&mut d, 4, 0, 64).await },
        |mut s: Server<T>| async move { p::relu(&mut s, &[1, 2, 3], 0, 64).await },
        no_client,
        false,
    );
    assert!(run.is_err(), "3 inputs against keys for 4 must fail");
    let run: Result<LocalRun<Vec<u64>, ()>> = run_local(
        |mut d: Dealer<T>| async move { p::deal_truncate(&mut d, 2, 70).await },
        |mut s: Server<T>| async move { p::truncate(&mut s, &[1, 2], 70).await },
        no_client,
        false,
    );
    assert!(run.is_err());
    // A piecewise function whose shift would exceed the ring.
    let run: Result<LocalRun<Vec<u64>, ()>> = run_local(
        |mut d: Dealer<T>| async move { p::deal_sigmoid(&mut d, 2, 60, 2).await },
        |mut s: Server<T>| async move { p::sigmoid(&mut s, &[1, 2], 60, 2).await },
        no_client,
        false,
    );
    assert!(run.is_err());
    let run: Result<LocalRun<Vec<u64>, ()>> = run_local(
        |mut d: Dealer<T>| async move { p::deal_drelu(&mut d, 2, 1).await },
        |mut s: Server<T>| async move { p::drelu(&mut s, &[1, 2], 1).await },
        no_client,
        false,
    );
    assert!(run.is_err(), "a 1-bit comparison is refused");
}

/// A helper that sends material of the wrong size, or a peer that opens garbage, gives an
/// error on the servers, never a panic or a hang.
#[test]
fn malformed_material_and_openings_are_errors() {
    use sotto_core::local::block_on;
    use sotto_core::transport::{memory_mesh, Tag, Transport};
    for bad in [vec![1u8, 2, 3], vec![0u8; 4000], Vec::new()] {
        let [t0, t1, th, _c] = memory_mesh();
        let session = 3;
        let gate1 = Tag {
            session,
            step: 1 << 8,
        };
        let res = std::thread::scope(|sc| {
            let bad = bad.clone();
            sc.spawn(move || {
                block_on(async {
                    for (p, seed) in [(PartyId::P0, [1u8; 32]), (PartyId::P1, [2u8; 32])] {
                        th.send(p, Tag { session, step: 0 }, seed.to_vec()).await?;
                        th.send(p, gate1, bad.clone()).await?;
                    }
                    Ok::<_, sotto_core::CoreError>(())
                })
                .expect("sends");
                // keep the helper alive until the servers are done
                std::thread::sleep(std::time::Duration::from_millis(50));
            });
            let j = sc.spawn(|| {
                block_on(async {
                    let mut s = Server::start(&t1, session).await?;
                    p::relu(&mut s, &[1, 2], 8, 64).await
                })
            });
            let r0 = block_on(async {
                let mut s = Server::start(&t0, session).await?;
                p::relu(&mut s, &[1, 2], 8, 64).await
            });
            t0.close();
            (r0, j.join().expect("no panic"))
        });
        assert!(
            res.0.is_err() && res.1.is_err(),
            "material of {} bytes accepted",
            bad.len()
        );
    }
    // A peer that opens the wrong number of elements.
    let [t0, t1, th, _c] = memory_mesh();
    let res = std::thread::scope(|sc| {
        sc.spawn(|| {
            block_on(async {
                let mut d = Dealer::start(&th, 4).await?;
                p::deal_truncate(&mut d, 2, 8).await
            })
        });
        sc.spawn(|| {
            block_on(async {
                let s = Server::start(&t1, 4).await?;
                // P1 misbehaves: opens 3 elements where 2 are expected.
                s.transport()
                    .send(
                        PartyId::P0,
                        Tag {
                            session: 4,
                            step: (1 << 8) | 1,
                        },
                        vec![0u8; 24],
                    )
                    .await
            })
        });
        block_on(async {
            let mut s = Server::start(&t0, 4).await?;
            p::truncate(&mut s, &[1, 2], 8).await
        })
    });
    let err = res.expect_err("a wrong-sized opening must fail");
    assert!(err.to_string().contains("expected"), "{err}");
}
