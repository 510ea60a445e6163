//! Latency of private predictions of the bundled network A over loopback WebSockets.
//!
//! The model is loaded once; each prediction is a fresh session whose helper material is
//! dealt before the client sends its input (as a helper's pool would), so the printed time is
//! the client's wait: input shares out, both output shares back.
//!
//! `cargo run --release -p sotto-net --example ws_latency [-- MODEL.onnx]`

use std::time::{Duration, Instant};

use sotto_core::fixed::FixedPoint;
use sotto_core::protocols as p;
use sotto_core::session::{client_receive_output, client_send_input, Dealer, Server};
use sotto_core::CoreError;
use sotto_model::private::{deal_load, deal_predict, load, predict, share_weights};
use sotto_model::{import, Plan};
use sotto_net::loopback_mesh;

fn m2c(e: sotto_model::ModelError) -> CoreError {
    CoreError::Protocol(e.to_string())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "models/network_a.onnx".into());
    let model = import(&std::fs::read(&path)?)?;
    let plan = Plan::new(&model, FixedPoint::default(), 1.0)?;
    let [w0, w1] = share_weights(&plan, true)?;
    let [t0, t1, th, tc] = loopback_mesh(Duration::from_secs(30)).await?;
    let (t0, t1, th) = (
        std::sync::Arc::new(t0),
        std::sync::Arc::new(t1),
        std::sync::Arc::new(th),
    );
    // Model load: one session.
    let hl = {
        let (plan, th) = (plan.clone(), th.clone());
        tokio::spawn(async move {
            let mut d = Dealer::start(th, 1).await?;
            deal_load(&mut d, &plan, true).await.map_err(m2c)
        })
    };
    let load_one = |t: std::sync::Arc<sotto_net::WsTransport>, w| {
        let plan = plan.clone();
        tokio::spawn(async move {
            let mut s = Server::start(t, 1).await?;
            load(&mut s, &plan, w).await.map_err(m2c)
        })
    };
    let (l0, l1) = (load_one(t0.clone(), w0), load_one(t1.clone(), w1));
    let hl = std::sync::Arc::new(hl.await??);
    let (l0, l1) = (
        std::sync::Arc::new(l0.await??),
        std::sync::Arc::new(l1.await??),
    );
    for batch in [1usize, 100] {
        let x: Vec<f32> = (0..batch * plan.input_len)
            .map(|i| ((i * 13) % 256) as f32 / 255.0)
            .collect();
        let x_enc = plan.fp.encode_f32(&x)?;
        let out_len = batch * plan.output_len;
        let mut times = Vec::new();
        let runs = if batch == 1 { 200 } else { 20 };
        for r in 0..runs {
            let session = 1000 + (batch * 1000 + r) as u128;
            {
                let mut d = Dealer::start(th.clone(), session).await?;
                deal_predict(&mut d, &plan, &hl, batch).await?;
                p::deal_output(&mut d, out_len).await?;
            }
            let server =
                |t: std::sync::Arc<sotto_net::WsTransport>,
                 m: std::sync::Arc<sotto_model::private::Loaded>| {
                    let plan = plan.clone();
                    tokio::spawn(async move {
                        let mut s = Server::start(t, session).await?;
                        let xs = s.receive_input(batch * plan.input_len).await?;
                        let y = predict(&mut s, &plan, &m, xs, batch).await.map_err(m2c)?;
                        p::output(&mut s, &y, 64).await
                    })
                };
            let (a, b) = (
                server(t0.clone(), l0.clone()),
                server(t1.clone(), l1.clone()),
            );
            let t = Instant::now();
            client_send_input(&tc, session, &x_enc).await?;
            client_receive_output(&tc, session, out_len, 64).await?;
            times.push(t.elapsed());
            a.await??;
            b.await??;
        }
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "{path}, private weights, batch {batch}: median {:.3} ms, p95 {:.3} ms over {runs} predictions on loopback WebSockets",
            ms(times[times.len() / 2]),
            ms(times[times.len() * 95 / 100])
        );
    }
    Ok(())
}
