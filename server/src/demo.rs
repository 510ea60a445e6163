//! `sotto demo`: P0, P1 and the helper as separate tasks joined by real loopback WebSockets,
//! the bundled model, held-out MNIST digits predicted privately through the client crate, and
//! (once `web/dist` is built) the demo page.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sotto_client::{Client, ClientOptions};
use sotto_core::transport::PartyId;
use sotto_model::ir::argmax;

use crate::launch::{launch, link_bytes, LaunchOptions};

/// Flags of `sotto demo`.
#[derive(Debug)]
pub struct DemoArgs {
    /// The ONNX model; its held-out images and TensorFlow logits sit next to it.
    pub model: PathBuf,
    /// First of three ports (P0, P1, helper); 0 for free ones.
    pub port: u16,
    /// Digits to predict at start.
    pub count: usize,
    /// Exit after the predictions (status 1 if a private label differs from the plaintext).
    pub check: bool,
    /// Public weights.
    pub public_weights: bool,
    /// The web page directory.
    pub web: PathBuf,
}

/// Runs the demo.
pub fn run(a: DemoArgs) -> Result<(), String> {
    let dir = a.model.parent().unwrap_or(Path::new(".")).to_path_buf();
    let stem = a
        .model
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("model")
        .to_string();
    let (images, _) = crate::read_npy(&dir.join("mnist_test_images.npy"))?;
    let (labels, _) = crate::read_npy(&dir.join("mnist_test_labels.npy"))?;
    let reference = crate::read_npy(&dir.join(format!("{stem}_tf_logits.npy")))
        .ok()
        .map(|r| r.0);
    let web = a.web.join("index.html").is_file().then(|| a.web.clone());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let t = Instant::now();
        let l = launch(&LaunchOptions {
            model: a.model.clone(),
            id: stem.clone(),
            private: !a.public_weights,
            port: a.port,
            pool: vec![(1, 16)],
            max_batch: 128,
            web: web.clone(),
            timeout: Duration::from_secs(5),
            fewer_rounds: false,
            compact_comparisons: false,
        })
        .await?;
        let up = t.elapsed();
        println!(
            "sotto demo: model {} ({} weights), P0 {} · P1 {} · helper joined by loopback WebSockets; ready in {:.0} ms",
            a.model.display(),
            if a.public_weights { "public" } else { "private" },
            l.p0_url,
            l.p1_url,
            up.as_secs_f64() * 1e3
        );
        let client = Client::connect(&l.p0_url, &l.p1_url, ClientOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        let per = l.plan.input_len;
        let out_len = l.plan.output_len;
        let n = a.count.min(labels.len()).min(images.len() / per.max(1));
        // Count the helper's material from a full pool to a full pool: the bytes of exactly
        // the sessions these predictions used (not the model load, not a refill in flight).
        crate::launch::wait_pool_full(&l, 8).await;
        let before_links = link_bytes(&l);
        let before_client = client.bytes_sent();
        let before_dealt = l.states[0].dealt.load(Ordering::Relaxed);
        let before_out: Vec<u64> = l.states.iter().map(|s| s.client_sent.load(Ordering::Relaxed)).collect();
        let mut times = Vec::new();
        let (mut correct, mut agree_plain, mut agree_tf) = (0, 0, 0);
        for i in 0..n {
            let x: Vec<f32> = images[i * per..(i + 1) * per].iter().map(|v| *v as f32).collect();
            let t = Instant::now();
            let p = client.predict(&x, 1).await.map_err(|e| e.to_string())?;
            let dt = t.elapsed();
            times.push(dt);
            let label = p.labels[0];
            let plain = argmax(&l.model.forward(&x, 1).map_err(|e| e.to_string())?);
            let truth = labels[i] as usize;
            let tf = reference.as_ref().map(|r| argmax(&r[i * out_len..(i + 1) * out_len]));
            correct += usize::from(label == truth);
            agree_plain += usize::from(label == plain);
            agree_tf += usize::from(Some(label) == tf);
            println!(
                "digit {i:>3}: true {truth}, private {label}, plaintext {plain}{}  ({:.2} ms)",
                tf.map(|t| format!(", TensorFlow {t}")).unwrap_or_default(),
                dt.as_secs_f64() * 1e3
            );
        }
        if n > 0 {
            crate::launch::wait_pool_full(&l, 8).await;
            let after = link_bytes(&l);
            let (c0, c1) = client.bytes_sent();
            let out: Vec<u64> = l
                .states
                .iter()
                .zip(&before_out)
                .map(|(s, b)| (s.client_sent.load(Ordering::Relaxed) - b) / n as u64)
                .collect();
            let link = |f: PartyId, t: PartyId| {
                (after[f.index()][t.index()] - before_links[f.index()][t.index()]) / n as u64
            };
            let dealt = l.states[0].dealt.load(Ordering::Relaxed) - before_dealt;
            let helper = |t: PartyId| {
                (after[PartyId::Helper.index()][t.index()]
                    - before_links[PartyId::Helper.index()][t.index()])
                    / dealt.max(1)
            };
            let material = if dealt == 0 {
                "not measured (the pool has not refilled yet; see `sotto bench`)".to_string()
            } else {
                format!(
                    "→P0 {}, →P1 {} ({dealt} sessions dealt meanwhile)",
                    helper(PartyId::P0),
                    helper(PartyId::P1)
                )
            };
            let first = times[0];
            times.sort();
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            println!(
                "\n{n} private predictions: {correct} correct, {agree_plain}/{n} equal to the plaintext model{}",
                if reference.is_some() { format!(", {agree_tf}/{n} equal to TensorFlow") } else { String::new() }
            );
            println!(
                "latency at the client: median {:.2} ms, p95 {:.2} ms (first prediction {:.2} ms after the parties were up)",
                ms(times[n / 2]),
                ms(times[(n * 95 / 100).min(n - 1)]),
                ms(first)
            );
            println!(
                "bytes per prediction: client→P0 {}, client→P1 {} (a seed), P0→P1 {}, P1→P0 {}, P0→client {}, P1→client {}; helper material per session: {material}",
                (c0 - before_client.0) / n as u64,
                (c1 - before_client.1) / n as u64,
                link(PartyId::P0, PartyId::P1),
                link(PartyId::P1, PartyId::P0),
                out[0],
                out[1],
            );
        }
        client.close().await;
        let input_hint = dir.join("mnist_test_images.npy");
        println!(
            "\ntry it: cargo run --release -p sotto -- predict --p0 {} --p1 {} --input {} --limit 3",
            l.p0_url,
            l.p1_url,
            input_hint.display()
        );
        match &web {
            Some(_) => println!("open the demo page: http://{}/", l.p0_addr),
            None => println!(
                "(no demo page: {} has no index.html; build it with `bash scripts/build-web.sh`, or run `bash scripts/demo.sh`, which does both)",
                a.web.display()
            ),
        }
        if a.check {
            return if agree_plain == n {
                Ok(())
            } else {
                Err("a private label differed from the plaintext model's".into())
            };
        }
        println!("serving until Ctrl-C");
        let _ = tokio::signal::ctrl_c().await;
        Ok(())
    })
}
