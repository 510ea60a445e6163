//! What a single server sees does not depend on the secret.
//!
//! P1's view of a ReLU layer and of a private dense layer (the helper's material it receives
//! and P0's opened shares) is recorded for two very different secrets; the byte histogram of
//! each view must look uniform, and the two views must look alike (chi-square tests with a
//! false-alarm rate far below one in a million).

use std::collections::HashMap;
use std::sync::Mutex;

use sotto_core::linear::Bilinear;
use sotto_core::local::block_on;
use sotto_core::prg::Prg;
use sotto_core::protocols as p;
use sotto_core::session::{Dealer, Server};
use sotto_core::transport::{memory_mesh, PartyId, Tag, Transport};
use sotto_core::{ring, share, Result};

/// Per step: the share P1 sent and the share P0 sent.
type Openings = HashMap<u32, (Vec<u8>, Vec<u8>)>;

/// Records what its party (P1) receives, and the values it opens with P0 (its own share plus
/// P0's, per step).
struct Recording<T> {
    inner: T,
    received: Mutex<Vec<u8>>,
    opened: Mutex<Openings>,
}

impl<T: Transport> Transport for Recording<T> {
    fn id(&self) -> PartyId {
        self.inner.id()
    }
    async fn send(&self, to: PartyId, tag: Tag, data: Vec<u8>) -> Result<()> {
        if to == PartyId::P0 {
            self.opened
                .lock()
                .expect("not poisoned")
                .entry(tag.step)
                .or_default()
                .0 = data.clone();
        }
        self.inner.send(to, tag, data).await
    }
    async fn recv(&self, from: PartyId, tag: Tag) -> Result<Vec<u8>> {
        let m = self.inner.recv(from, tag).await?;
        // The seed message (step 0 of the session) is key material, not a view of x.
        if tag.step != 0 {
            self.received
                .lock()
                .expect("not poisoned")
                .extend_from_slice(&m);
        }
        if from == PartyId::P0 {
            self.opened
                .lock()
                .expect("not poisoned")
                .entry(tag.step)
                .or_default()
                .1 = m.clone();
        }
        Ok(m)
    }
}

/// P1's view of a ReLU and a private dense layer on `x`: (all bytes received, the opened
/// values as bytes).
fn p1_view(x: &[u64], w: &[u64], k: usize, n: usize) -> (Vec<u8>, Vec<u8>) {
    let [t0, t1, th, _tc] = memory_mesh();
    let t1 = Recording {
        inner: t1,
        received: Mutex::new(Vec::new()),
        opened: Mutex::new(HashMap::new()),
    };
    let (x0, x1) = share::share(x, &mut Prg::from_os().expect("os rng"));
    let (w0, w1) = share::share(w, &mut Prg::from_os().expect("os rng"));
    let op = Bilinear::MatMul {
        m: x.len() / k,
        k,
        n,
    };
    let session = 77;
    std::thread::scope(|sc| {
        sc.spawn(|| {
            block_on(async {
                let mut d = Dealer::start(&th, session).await?;
                p::deal_relu(&mut d, x.len(), 8, 64).await?;
                let mask = p::deal_weight_mask(&mut d, k * n).await?;
                p::deal_bilinear_private(&mut d, &op, &mask).await
            })
            .expect("helper runs")
        });
        let j = sc.spawn(|| block_on(serve(&t1, session, x1, w1, op)).expect("P1 runs"));
        block_on(serve(&t0, session, x0, w0, op)).expect("P0 runs");
        j.join().expect("no panic");
    });
    let received = t1.received.into_inner().expect("not poisoned");
    let mut opened = Vec::new();
    let mut steps: Vec<_> = t1
        .opened
        .into_inner()
        .expect("not poisoned")
        .into_iter()
        .collect();
    steps.sort_by_key(|(s, _)| *s);
    for (_, (mine, theirs)) in steps {
        let a = ring::from_le_bytes(&mine, mine.len() / 8).expect("whole words");
        let b = ring::from_le_bytes(&theirs, theirs.len() / 8).expect("whole words");
        opened.extend(ring::to_le_bytes(&ring::add(&a, &b).expect("same length")));
    }
    (received, opened)
}

async fn serve<T: Transport>(
    t: T,
    session: u128,
    xs: Vec<u64>,
    ws: Vec<u64>,
    op: Bilinear,
) -> Result<Vec<u64>> {
    let mut s = Server::start(t, session).await?;
    p::relu(&mut s, &xs, 8, 64).await?;
    let pw = p::load_private_weight(&mut s, &ws).await?;
    p::bilinear_private(&mut s, &op, &xs, &pw).await
}

fn histogram(bytes: &[u8]) -> [f64; 256] {
    let mut h = [0f64; 256];
    for &b in bytes {
        h[b as usize] += 1.0;
    }
    h
}

/// Chi-square statistic of a histogram against the uniform distribution.
fn chi_uniform(h: &[f64; 256]) -> f64 {
    let total: f64 = h.iter().sum();
    let e = total / 256.0;
    h.iter().map(|o| (o - e) * (o - e) / e).sum()
}

/// Two-sample chi-square statistic (same totals).
fn chi_two(a: &[f64; 256], b: &[f64; 256]) -> f64 {
    a.iter()
        .zip(b)
        .filter(|(x, y)| **x + **y > 0.0)
        .map(|(x, y)| (x - y) * (x - y) / (x + y))
        .sum()
}

#[test]
fn a_servers_view_is_independent_of_the_secret() {
    let (k, n, rows) = (64, 16, 64);
    let zeros = vec![0u64; rows * k];
    // A secret far from uniform: every element the same large positive value.
    let big = vec![(1u64 << 50) + 12345; rows * k];
    let (va, oa) = p1_view(&zeros, &vec![1u64; k * n], k, n);
    let (vb, ob) = p1_view(&big, &vec![u64::MAX - 3; k * n], k, n);
    assert_eq!(va.len(), vb.len(), "view sizes do not depend on the secret");
    assert_eq!(
        oa.len(),
        8 * (2 * rows * k + k * n + rows * k),
        "four openings: truncation and ReLU, the weight mask, the product"
    );
    // Thresholds for 255 degrees of freedom at p ≈ 1e-7: 255 + 5.3·sqrt(510) ≈ 375.
    let two = chi_two(&histogram(&va), &histogram(&vb));
    assert!(
        two < 375.0,
        "P1's views differ between secrets: chi2 = {two}"
    );
    for (name, o) in [("zeros", &oa), ("big", &ob)] {
        let c = chi_uniform(&histogram(o));
        assert!(
            c < 375.0,
            "values opened for {name} are not uniform: chi2 = {c}"
        );
    }
    let two = chi_two(&histogram(&oa), &histogram(&ob));
    assert!(
        two < 375.0,
        "opened values differ between secrets: chi2 = {two}"
    );
}
