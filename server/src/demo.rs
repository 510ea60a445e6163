//! `sotto demo`: P0, P1, the helper and a client as separate tasks joined by real loopback
//! WebSockets, predicting held-out MNIST digits privately with a bundled model.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sotto_core::fixed::{decode_with, FixedPoint};
use sotto_core::local::new_session_id;
use sotto_core::protocols as p;
use sotto_core::session::{client_receive_output, client_send_input, Dealer, Server};
use sotto_core::transport::{Counting, PartyId};
use sotto_core::CoreError;
use sotto_model::ir::argmax;
use sotto_model::private::{deal_load, deal_predict, load, predict, share_weights, Loaded};
use sotto_model::Plan;
use sotto_net::{loopback_mesh, WsTransport};

type Link = Arc<Counting<WsTransport>>;

fn m2c(e: sotto_model::ModelError) -> CoreError {
    CoreError::Protocol(e.to_string())
}

/// What the demo needs from the model folder.
pub struct DemoInputs<'a> {
    /// The ONNX model.
    pub model: &'a Path,
    /// Held-out images (uint8 or float32, batch first) and labels.
    pub images: Vec<f64>,
    /// Labels.
    pub labels: Vec<f64>,
    /// TensorFlow's logits for the same images, if present.
    pub reference: Option<Vec<f64>>,
    /// How many images to predict.
    pub count: usize,
}

/// Runs the demo; returns false if a private label differs from the plaintext model's.
pub async fn run(inp: DemoInputs<'_>) -> Result<bool, String> {
    let err = |e: CoreError| e.to_string();
    let bytes = std::fs::read(inp.model).map_err(|e| format!("{}: {e}", inp.model.display()))?;
    let model = sotto_model::import(&bytes).map_err(|e| e.to_string())?;
    let plan = Plan::new(&model, FixedPoint::default(), 1.0).map_err(|e| e.to_string())?;
    let per = plan.input_len;
    let n = inp
        .count
        .min(inp.labels.len())
        .min(inp.images.len() / per.max(1));
    if n == 0 {
        return Err("no images to predict".into());
    }
    let [w0, w1] = share_weights(&plan, true).map_err(|e| e.to_string())?;
    println!(
        "sotto demo: {} ({} layers, private weights), P0, P1 and the helper joined by loopback WebSockets",
        inp.model.display(),
        model.layers.len()
    );
    let [t0, t1, th, tc] = loopback_mesh(Duration::from_secs(30))
        .await
        .map_err(|e| e.to_string())?;
    let [t0, t1, th, tc]: [Link; 4] = [t0, t1, th, tc].map(|t| Arc::new(Counting::new(t)));
    // Load the model: P0 and P1 open W − B once.
    let load_session = new_session_id().map_err(err)?;
    let hl = {
        let (plan, th) = (plan.clone(), th.clone());
        tokio::spawn(async move {
            let mut d = Dealer::start(th, load_session).await?;
            deal_load(&mut d, &plan, true).await.map_err(m2c)
        })
    };
    let load_on = |t: Link, w| {
        let plan = plan.clone();
        tokio::spawn(async move {
            let mut s = Server::start(t, load_session).await?;
            load(&mut s, &plan, w).await.map_err(m2c)
        })
    };
    let (l0, l1) = (load_on(t0.clone(), w0), load_on(t1.clone(), w1));
    let join = |e: tokio::task::JoinError| e.to_string();
    let hl = Arc::new(hl.await.map_err(join)?.map_err(err)?);
    let l0: Arc<Loaded> = Arc::new(l0.await.map_err(join)?.map_err(err)?);
    let l1: Arc<Loaded> = Arc::new(l1.await.map_err(join)?.map_err(err)?);
    let before = [&t0, &t1, &th, &tc].map(|t| t.counters().snapshot());
    let mut times = Vec::new();
    let (mut correct, mut agree_plain, mut agree_tf) = (0, 0, 0);
    for i in 0..n {
        let x: Vec<f32> = inp.images[i * per..(i + 1) * per]
            .iter()
            .map(|v| *v as f32)
            .collect();
        let x_enc = plan.fp.encode_f32(&x).map_err(err)?;
        let session = new_session_id().map_err(err)?;
        let out_len = plan.output_len;
        // The helper deals this session's material first, as its precomputed pool would.
        {
            let mut d = Dealer::start(th.clone(), session).await.map_err(err)?;
            deal_predict(&mut d, &plan, &hl, 1)
                .await
                .map_err(|e| e.to_string())?;
            p::deal_output(&mut d, out_len).await.map_err(err)?;
        }
        let serve = |t: Link, m: Arc<Loaded>| {
            let plan = plan.clone();
            tokio::spawn(async move {
                let mut s = Server::start(t, session).await?;
                let xs = s.receive_input(plan.input_len).await?;
                let y = predict(&mut s, &plan, &m, xs, 1).await.map_err(m2c)?;
                p::output(&mut s, &y, 64).await
            })
        };
        let (a, b) = (serve(t0.clone(), l0.clone()), serve(t1.clone(), l1.clone()));
        let t = Instant::now();
        client_send_input(&tc, session, &x_enc).await.map_err(err)?;
        let y = client_receive_output(&tc, session, out_len, 64)
            .await
            .map_err(err)?;
        let dt = t.elapsed();
        a.await.map_err(join)?.map_err(err)?;
        b.await.map_err(join)?.map_err(err)?;
        times.push(dt);
        let logits: Vec<f64> = y.iter().map(|v| decode_with(*v, plan.out_frac)).collect();
        let label = argmax(&logits);
        let plain = argmax(&model.forward(&x, 1).map_err(|e| e.to_string())?);
        let truth = inp.labels[i] as usize;
        let tf = inp
            .reference
            .as_ref()
            .map(|r| argmax(&r[i * out_len..(i + 1) * out_len]));
        correct += usize::from(label == truth);
        agree_plain += usize::from(label == plain);
        agree_tf += usize::from(Some(label) == tf);
        println!(
            "digit {i:>3}: true {truth}, private {label}, plaintext {plain}{}  ({:.2} ms)",
            tf.map(|t| format!(", TensorFlow {t}")).unwrap_or_default(),
            dt.as_secs_f64() * 1e3
        );
    }
    let after = [&t0, &t1, &th, &tc].map(|t| t.counters().snapshot());
    let sent = |i: usize, to: PartyId| (after[i].bytes_to(to) - before[i].bytes_to(to)) / n as u64;
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "\n{n} private predictions: {correct} correct, {agree_plain}/{n} equal to the plaintext model{}",
        if inp.reference.is_some() { format!(", {agree_tf}/{n} equal to TensorFlow") } else { String::new() }
    );
    println!(
        "latency (client: input out, output back): median {:.2} ms, p95 {:.2} ms",
        ms(times[n / 2]),
        ms(times[(n * 95 / 100).min(n - 1)])
    );
    println!(
        "per prediction: client→P0 {} B, client→P1 {} B (a seed); P0→P1 {} B, P1→P0 {} B; helper→P0 {} B, helper→P1 {} B",
        sent(3, PartyId::P0),
        sent(3, PartyId::P1),
        sent(0, PartyId::P1),
        sent(1, PartyId::P0),
        sent(2, PartyId::P0),
        sent(2, PartyId::P1)
    );
    println!("(the browser demo page and `sotto serve` come with the serving issue)");
    Ok(agree_plain == n)
}
