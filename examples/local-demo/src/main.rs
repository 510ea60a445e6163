//! A private prediction of a small built-in network through the in-memory transport.
//!
//! Network A of SecureML, SecureNN and TF Encrypted (dense 784→128→128→10 with ReLU) with
//! fixed pseudo-random weights. The client secret-shares its input (the full share to P0, a
//! 32-byte seed to P1), P0 and P1 run the network with the helper's correlated randomness, and
//! the client adds the two output shares. The result is printed next to the plaintext one.
//!
//! Usage: `cargo run --release -p local-demo [-- --batch N] [--check]`
//! (`--check` exits with an error unless the private labels equal the plaintext ones).

use std::process::ExitCode;
use std::time::Instant;

use sotto_core::fixed::{decode_with, FixedPoint};
use sotto_core::linear::Bilinear;
use sotto_core::local::{run_local, LocalTransport};
use sotto_core::prg::{Prg, Seed};
use sotto_core::protocols as p;
use sotto_core::session::{client_receive_output, client_send_input, Dealer, Server};
use sotto_core::transport::PartyId;
use sotto_core::{share, CoreError, Result};

const SIZES: [usize; 4] = [784, 128, 128, 10];

struct Net {
    weights: Vec<Vec<f64>>,
    biases: Vec<Vec<f64>>,
}

fn uniform(prg: &mut Prg, n: usize, scale: f64) -> Vec<f64> {
    prg.vec_u64(n)
        .iter()
        .map(|v| ((*v >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * scale)
        .collect()
}

impl Net {
    fn built_in() -> Net {
        let mut prg = Prg::new(&Seed([7; 32]), 0);
        let mut weights = Vec::new();
        let mut biases = Vec::new();
        for l in 0..3 {
            let (i, o) = (SIZES[l], SIZES[l + 1]);
            weights.push(uniform(&mut prg, i * o, (6.0 / (i + o) as f64).sqrt()));
            biases.push(uniform(&mut prg, o, 0.1));
        }
        Net { weights, biases }
    }

    fn plain(&self, x: &[f64], batch: usize) -> Vec<f64> {
        let mut h = x.to_vec();
        for l in 0..3 {
            let (i, o) = (SIZES[l], SIZES[l + 1]);
            let mut y = vec![0.0; batch * o];
            for b in 0..batch {
                for j in 0..o {
                    let mut s = self.biases[l][j];
                    for k in 0..i {
                        s += h[b * i + k] * self.weights[l][k * o + j];
                    }
                    y[b * o + j] = if l < 2 { s.max(0.0) } else { s };
                }
            }
            h = y;
        }
        h
    }
}

fn argmax(row: &[f64]) -> usize {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best
}

/// Encoded weights (f bits) and biases (2f bits, they add to products), shared for the servers.
struct Shared {
    w: [Vec<Vec<u64>>; 2],
    b: [Vec<Vec<u64>>; 2],
}

fn share_model(net: &Net, fp: FixedPoint) -> Result<Shared> {
    let mut prg = Prg::from_os()?;
    let mut w = [Vec::new(), Vec::new()];
    let mut b = [Vec::new(), Vec::new()];
    for l in 0..3 {
        let (w0, w1) = share::share(&fp.encode_slice(&net.weights[l])?, &mut prg);
        let bias = net.biases[l]
            .iter()
            .map(|v| sotto_core::fixed::encode_with(*v, 2 * fp.frac_bits()))
            .collect::<Result<Vec<_>>>()?;
        let (b0, b1) = share::share(&bias, &mut prg);
        w[0].push(w0);
        w[1].push(w1);
        b[0].push(b0);
        b[1].push(b1);
    }
    Ok(Shared { w, b })
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<bool> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let check = args.iter().any(|a| a == "--check");
    let batch = match args.iter().position(|a| a == "--batch") {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|b| (1..=1000).contains(b))
            .ok_or_else(|| CoreError::Param("--batch needs a number from 1 to 1000".into()))?,
        None => 4,
    };
    let fp = FixedPoint::default();
    let f = fp.frac_bits();
    let net = Net::built_in();
    let shared = share_model(&net, fp)?;
    // A few inputs in [0, 1), like normalised pixels.
    let x = uniform(&mut Prg::from_os()?, batch * 784, 0.5)
        .iter()
        .map(|v| v + 0.5)
        .collect::<Vec<_>>();
    let x_enc = fp.encode_slice(&x)?;
    let ops: Vec<Bilinear> = (0..3)
        .map(|l| Bilinear::MatMul {
            m: batch,
            k: SIZES[l],
            n: SIZES[l + 1],
        })
        .collect();
    let out_len = batch * 10;

    let helper = |mut d: Dealer<LocalTransport>| {
        let ops = &ops;
        async move {
            let mut masks = Vec::new();
            for op in ops {
                masks.push(p::deal_weight_mask(&mut d, op.w_len()).await?);
            }
            for l in 0..3 {
                p::deal_bilinear_private(&mut d, &ops[l], &masks[l]).await?;
            }
            for op in &ops[..2] {
                p::deal_relu(&mut d, op.out_len(), f, p::FULL_BITS).await?;
            }
            p::deal_output(&mut d, out_len).await
        }
    };
    let server = |mut s: Server<LocalTransport>| {
        let (ops, shared) = (&ops, &shared);
        async move {
            let me = s.id().index();
            let mut weights = Vec::new();
            for l in 0..3 {
                weights.push(p::load_private_weight(&mut s, &shared.w[me][l]).await?);
            }
            // Input-independent work first (the helper dealt the products, then the ReLUs),
            // then the query.
            let mut prepared = Vec::new();
            for l in 0..3 {
                prepared.push(p::prepare_bilinear_private(&mut s, &ops[l], &weights[l]).await?);
            }
            let mut relus = Vec::new();
            for op in &ops[..2] {
                relus.push(p::prepare_relu(&mut s, op.out_len(), f, p::FULL_BITS).await?);
            }
            let mut relus = relus.into_iter();
            let mut h = s.receive_input(batch * 784).await?;
            for (l, prep) in prepared.into_iter().enumerate() {
                let mut z = p::finish_bilinear_private(&mut s, prep, &h, &weights[l]).await?;
                p::add_bias(&s, &mut z, &shared.b[me][l], false)?;
                h = match relus.next() {
                    Some(r) => p::finish_relu(&mut s, r, &z).await?,
                    None => z,
                };
            }
            p::output(&mut s, &h, 64).await
        }
    };
    let client = |t: LocalTransport, session: u128| {
        let x_enc = &x_enc;
        async move {
            client_send_input(&t, session, x_enc).await?;
            client_receive_output(&t, session, out_len, 64).await
        }
    };
    let start = Instant::now();
    let run = run_local(helper, server, client, false)?;
    let elapsed = start.elapsed();

    let private: Vec<f64> = run.client.iter().map(|v| decode_with(*v, 2 * f)).collect();
    let plain = net.plain(&x, batch);
    println!("sotto local demo: network A (784-128-128-10, ReLU), private weights, batch {batch}");
    println!("three parties and a client in one process, joined by the in-memory transport\n");
    let mut ok = true;
    let mut worst: f64 = 0.0;
    for b in 0..batch {
        let (pr, pl) = (&private[b * 10..(b + 1) * 10], &plain[b * 10..(b + 1) * 10]);
        let (lp, ll) = (argmax(pr), argmax(pl));
        ok &= lp == ll;
        for (a, c) in pr.iter().zip(pl) {
            worst = worst.max((a - c).abs());
        }
        let fmt = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:7.3}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!("input {b}: private label {lp}, plaintext label {ll}");
        println!("  private logits   {}", fmt(pr));
        println!("  plaintext logits {}", fmt(pl));
    }
    let s = &run.sent;
    println!("\nmax |private - plaintext| logit: {worst:.5}");
    println!(
        "time (model load + prediction, all parties): {:.2} ms",
        elapsed.as_secs_f64() * 1e3
    );
    println!(
        "online: P0→P1 {} B, P1→P0 {} B in {} rounds; client→P0 {} B, client→P1 {} B (a seed)",
        s[0].bytes_to(PartyId::P1),
        s[1].bytes_to(PartyId::P0),
        s[0].messages_to(PartyId::P1),
        s[3].bytes_to(PartyId::P0),
        s[3].bytes_to(PartyId::P1)
    );
    println!(
        "helper material: {} B to P0, {} B to P1",
        s[2].bytes_to(PartyId::P0),
        s[2].bytes_to(PartyId::P1)
    );
    println!(
        "(the model load opens W − B once: 1 of those rounds and {} B per server)",
        8 * (784 * 128 + 128 * 128 + 1280)
    );
    if check && (!ok || worst > 0.01) {
        eprintln!("check failed: labels agree = {ok}, worst logit error = {worst}");
        return Ok(false);
    }
    Ok(true)
}
