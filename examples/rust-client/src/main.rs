//! A private prediction from a Rust program, through the `sotto-client` crate.
//!
//! Start the parties (`cargo run --release -p sotto -- demo`, or three `sotto serve`
//! processes), then:
//!
//! ```sh
//! cargo run -p rust-client                                     # ws://127.0.0.1:8100 and :8101
//! cargo run -p rust-client -- wss://p0.example:8100 wss://p1.example:8101 ca.pem
//! ```
//!
//! The program draws a "7" into a 28×28 image, secret-shares it (P0 gets `x − PRG(s)`, P1
//! only the 32-byte seed `s`), and adds the two servers' output shares: neither server sees
//! the image or the answer.

use std::time::Instant;

use sotto_client::{Client, ClientOptions};

/// A 28×28 "7": a top bar and a diagonal stroke, white (1.0) on black like MNIST.
fn seven() -> Vec<f32> {
    let mut img = vec![0.0f32; 28 * 28];
    for x in 7..21 {
        for y in 6..8 {
            img[y * 28 + x] = 1.0;
        }
    }
    for y in 8..23 {
        let x = 20 - (y - 8) * 9 / 15;
        for dx in 0..2 {
            img[y * 28 + x + dx] = 1.0;
        }
    }
    img
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let p0 = args.first().map_or("ws://127.0.0.1:8100", String::as_str);
    let p1 = args.get(1).map_or("ws://127.0.0.1:8101", String::as_str);
    let ca_pem = match args.get(2) {
        Some(path) => Some(std::fs::read(path)?),
        None => None,
    };
    let client = Client::connect(
        p0,
        p1,
        ClientOptions {
            ca_pem,
            ..ClientOptions::default()
        },
    )
    .await?;
    let m = client.manifest();
    println!(
        "model {}: input {:?}, {} outputs",
        m.model_id, m.input_shape, m.output_len
    );
    let t = Instant::now();
    let p = client.predict(&seven(), 1).await?;
    println!(
        "label {} in {:.2} ms",
        p.labels[0],
        t.elapsed().as_secs_f64() * 1e3
    );
    match &p.probabilities {
        Some(probs) => {
            for (digit, q) in probs.iter().enumerate() {
                println!(
                    "{digit}: {:5.1}% {}",
                    q * 100.0,
                    "#".repeat((q * 40.0) as usize)
                );
            }
        }
        None => println!("logits {:.3?}", p.logits),
    }
    let (to_p0, to_p1) = client.bytes_sent();
    println!("sent {to_p0} bytes to P0 and {to_p1} bytes to P1 (the hello and a 32-byte seed)");
    client.close().await;
    Ok(())
}
