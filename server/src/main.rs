//! The `sotto` command.
//!
//! `serve` runs one party (P0, P1 or the helper) per process; `demo` starts all three with the
//! bundled model; `predict` is a client; `bench` measures end to end; `certs` makes TLS
//! certificates and the parties' key; `share-model` splits a model into the parties' files;
//! `inspect` and `eval` profile and check a model.

// The workspace denies `unsafe`; only sotto-core allows it, for one call (`simd`).
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

mod bench;
mod cmd;
mod data;
mod demo;
mod launch;
mod memory;
mod netsim;
mod serve;
use sotto_core::fixed::{decode_with, FixedPoint};
use sotto_model::ir::{shape_string, softmax};
use sotto_model::private::{run_in_process_with, share_weights};
use sotto_model::{import, Model, Plan};

/// mimalloc instead of glibc's malloc: after a spike (a flood of requests, a large batch) it
/// hands freed pages back to the system within milliseconds, where glibc kept 180-230 MB per
/// party after the attack suite's floods. It advises its arenas as transparent huge pages;
/// building it without them (`no_thp`) made ResNet-50 in `sotto eval` 45 % slower (system
/// time 53 -> 99 s for two images) and network A's sustained rate no faster over 2,000
/// requests, so it keeps them.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Private prediction: two servers and a helper run a neural network on secret shares.
#[derive(Debug, Parser)]
#[command(name = "sotto", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct Numbers {
    /// Fractional bits of the fixed-point format.
    #[arg(long, default_value_t = 16)]
    frac_bits: u32,
    /// Largest magnitude of any input value (1.0 for pixels scaled to [0, 1]).
    #[arg(long, default_value_t = 1.0)]
    input_bound: f64,
    /// Sample inputs (.npy, shaped like the model's input): bound each layer's values by the
    /// largest magnitude seen on them times --margin instead of the proven worst case, for
    /// deep networks whose worst case does not fit the ring. A value beyond its calibrated
    /// bound gives a wrong answer (README, "Calibrated bounds").
    #[arg(long, value_name = "SAMPLES.npy")]
    calibrate: Option<PathBuf>,
    /// With --calibrate: the factor between the largest magnitude seen and the bound.
    #[arg(long, default_value_t = sotto_model::Calibration::DEFAULT_MARGIN, requires = "calibrate")]
    margin: f64,
    /// Opt-in, private weights only: run each truncating ReLU that feeds only a dense layer
    /// together with that layer's product, saving the product's round (network A: 8 → 6
    /// rounds) for more helper material (network A: +1.0 MB per prediction and server).
    /// Files made by `share-model` carry it; all three parties must have one set's files.
    #[arg(long)]
    fewer_rounds: bool,
    /// Opt-in, either weights mode: max pools and ReLUs without a truncation compare with
    /// one-bit keys (about 2.4× smaller, half the evaluation), one more round per comparison
    /// (per max-tree level), and a ReLU behind a non-overlapping max pool runs after it where
    /// that saves material (a quarter of the ReLUs behind a 2×2 pool, same numbers): faster
    /// where the parties share a host or a LAN, slower over a WAN (CIFAR-10 CNN: 21 → 25
    /// rounds, 36 % less helper material). Files made by
    /// `share-model` carry it; all three parties must have one set's files.
    #[arg(long)]
    compact_comparisons: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start P0, P1 and the helper (separate tasks, loopback WebSockets) with the bundled model,
    /// predict held-out digits privately through the client, print the demo page's URL and a
    /// `sotto predict` line, and keep serving until Ctrl-C.
    ///
    /// Example: sotto demo            (then open the printed URL)
    /// Example: sotto demo --count 20 --check
    Demo {
        /// The model (with its held-out images and TensorFlow logits next to it in models/).
        #[arg(long, default_value = "models/network_a.onnx")]
        model: PathBuf,
        /// First of three ports: P0 (and the page), P1, the helper; 0 picks free ports.
        #[arg(long, default_value_t = 8100)]
        port: u16,
        /// How many digits to predict at start.
        #[arg(long, default_value_t = 10)]
        count: usize,
        /// Exit after the predictions: status 1 if a private label differs from the
        /// plaintext model's.
        #[arg(long)]
        check: bool,
        /// Weights in the clear on both servers (only the input is private).
        #[arg(long)]
        public_weights: bool,
        /// The demo page's directory.
        #[arg(long, default_value = "web/dist")]
        web: PathBuf,
    },
    /// Run one party: P0, P1 or the helper.
    ///
    /// Example (three hosts; files from `sotto share-model` and `sotto certs`):
    ///   helper: sotto serve --role helper --listen 0.0.0.0:8102 --model net=models/net --tls-cert helper.pem --tls-key helper.key --tls-ca ca.pem --key-file helper.keys
    ///   p1:     sotto serve --role p1 --listen 0.0.0.0:8101 --helper wss://helper.example:8102 --model net=models/net --tls-cert p1.pem --tls-key p1.key --tls-ca ca.pem --key-file p1.keys
    ///   p0:     sotto serve --role p0 --listen 0.0.0.0:8100 --p1 wss://p1.example:8101 --helper wss://helper.example:8102 --model net=models/net --tls-cert p0.pem --tls-key p0.key --tls-ca ca.pem --key-file p0.keys
    Serve(Box<cmd::ServeArgs>),
    /// Make a deployment's TLS CA, a certificate and key per party (each valid for its own
    /// host names only), and one key per pair of parties (p0.keys, p1.keys, helper.keys: each
    /// party gets only its own pairs' keys). Key files are written mode 0600.
    ///
    /// Example: sotto certs --out certs --name p0=p0.example --name p1=p1.example --name helper=helper.example
    Certs {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// `ROLE=HOST`: a host name or IP that party's certificate is valid for (repeatable;
        /// every certificate is also valid for localhost and 127.0.0.1).
        #[arg(long = "name")]
        names: Vec<String>,
    },
    /// Make a client API key for `sotto serve --client-keys FILE`: prints the key once (give
    /// it to the client) and appends its line (name, the key's SHA-256, rate) to FILE, which
    /// holds digests only and is written mode 0600. Give P0 and P1 the same file.
    ///
    /// Example: sotto client-key --name alice --rate 20 --file deploy/client.keys
    ClientKey {
        /// The key's name (in logs; letters, digits, -_.@).
        #[arg(long)]
        name: String,
        /// Requests per second the key may make (a burst of one second's worth); none:
        /// unlimited.
        #[arg(long)]
        rate: Option<f64>,
        /// The client-keys file to append to (created if missing).
        #[arg(long)]
        file: PathBuf,
    },
    /// Predict privately through running parties: shares each input (P0 gets x − PRG(s), P1
    /// only s) and prints logits and labels as JSON.
    ///
    /// Example: sotto predict --p0 ws://127.0.0.1:8100 --p1 ws://127.0.0.1:8101 --input models/mnist_test_images.npy --limit 3
    Predict {
        /// P0's base URL.
        #[arg(long)]
        p0: String,
        /// P1's base URL.
        #[arg(long)]
        p1: String,
        /// Inputs (.npy, batch first; uint8 pixels are divided by 255).
        #[arg(long)]
        input: PathBuf,
        /// Only the first N inputs.
        #[arg(long)]
        limit: Option<usize>,
        /// Inputs per request.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Model id (empty: the servers' default).
        #[arg(long, default_value = "")]
        model: String,
        /// CA certificate for wss:// URLs.
        #[arg(long)]
        tls_ca: Option<PathBuf>,
        /// A file holding the API key (`sotto client-key`), when the servers require one.
        #[arg(long)]
        api_key_file: Option<PathBuf>,
        /// How long to wait for each request's result (large models, whose material is
        /// streamed, take minutes).
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
    },
    /// Measure private predictions end to end and print JSON (latency, throughput, bytes per
    /// link, rounds, the plaintext model's time); a progress bar on a terminal.
    ///
    /// Example: sotto bench --batch 1,100 --concurrency 1,8
    Bench(Box<bench::BenchArgs>),
    /// Print one line per layer: shapes, protocol, bit budget, online rounds and bytes.
    ///
    /// Example: sotto inspect models/network_a.onnx
    Inspect {
        /// The ONNX model.
        model: PathBuf,
        #[command(flatten)]
        numbers: Numbers,
        /// Cost the model with public weights (only the input is private).
        #[arg(long)]
        public_weights: bool,
    },
    /// Make the three per-party model files (P0, P1, helper) in DIR: in private-weights mode
    /// P0 and P1 get additive shares of the weights, the helper only shapes. No file holds
    /// the layers' value bounds or the model's hash; DIR/set.json records the set id and the
    /// ONNX file's SHA-256 for the model owner (keep it, do not copy it to the parties' hosts).
    ///
    /// Example: sotto share-model models/network_a.onnx --out deploy/
    ShareModel {
        /// The ONNX model.
        model: PathBuf,
        /// Directory for p0.sotto, p1.sotto, helper.sotto and set.json.
        #[arg(long)]
        out: PathBuf,
        /// Give both servers the plain weights (only the input is private).
        #[arg(long)]
        public_weights: bool,
        /// Keep the ONNX node names in P0's and P1's files (default: steps are named step0,
        /// step1, ...; the helper's file never has them).
        #[arg(long)]
        keep_node_names: bool,
        #[command(flatten)]
        numbers: Numbers,
    },
    /// Predict in the clear (float and fixed-point evaluators, no parties): the plaintext twin
    /// a private prediction is checked against. Prints JSON with `labels`, `logits` (float) and
    /// `labels_fixed`, `logits_fixed` (the exact integer model the parties compute).
    ///
    /// Example: sotto plain --model models/network_a.onnx --input x.json
    Plain {
        /// The ONNX model.
        #[arg(long)]
        model: PathBuf,
        /// Inputs, batch first: a .npy file (float32 in the model's layout, NHWC for Keras
        /// image models; uint8 pixels are divided by 255 when the input bound is 1) or a .json
        /// file holding one flat array of numbers.
        #[arg(long)]
        input: PathBuf,
        /// Only the first N inputs.
        #[arg(long)]
        limit: Option<usize>,
        #[command(flatten)]
        numbers: Numbers,
    },
    /// Run every input through the three-party protocol (in one process) and print JSON with
    /// the private and float accuracy, their agreement and the largest logit error.
    ///
    /// Example: sotto eval --model models/network_a.onnx --input x.npy --labels y.npy
    Eval {
        /// The ONNX model.
        #[arg(long)]
        model: PathBuf,
        /// Inputs, batch first, float32 in the model's layout (NHWC for Keras image models);
        /// uint8 pixels are divided by 255 when the input bound is 1.
        #[arg(long)]
        input: PathBuf,
        /// Integer class indices, one per input (not one-hot; 0/1 for a one-output model,
        /// scored by threshold).
        #[arg(long)]
        labels: PathBuf,
        /// TensorFlow's own outputs for the same inputs (float32, [n, classes]): also report
        /// the private model's agreement with them. Logits, or for a softmax-ended model
        /// probabilities (recognised, and compared with the softmax of the private logits).
        #[arg(long)]
        reference: Option<PathBuf>,
        /// Inputs per private prediction (fewer when the memory budget needs it).
        #[arg(long, default_value_t = 100)]
        batch: usize,
        /// Only the first N inputs.
        #[arg(long)]
        limit: Option<usize>,
        /// Weights in the clear on both servers (only the input is private).
        #[arg(long)]
        public_weights: bool,
        /// Memory for the helper's material of one private prediction, all parties of this
        /// process together (MiB). A model whose material does not fit is streamed (the
        /// helper deals step by step as the servers go) and its batches are split.
        #[arg(long, default_value_t = memory::DEFAULT_BUDGET_MB)]
        memory_budget_mb: u64,
        #[command(flatten)]
        numbers: Numbers,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.command {
        Command::Demo {
            model,
            port,
            count,
            check,
            public_weights,
            web,
        } => demo::run(demo::DemoArgs {
            model,
            port,
            count,
            check,
            public_weights,
            web,
        }),
        Command::Serve(a) => cmd::serve_cmd(*a),
        Command::Certs { out, names } => cmd::certs(&out, &names),
        Command::ClientKey { name, rate, file } => cmd::client_key(&name, rate, &file),
        Command::Predict {
            p0,
            p1,
            input,
            limit,
            batch,
            model,
            tls_ca,
            api_key_file,
            timeout_ms,
        } => cmd::client_options(&model, tls_ca.as_deref(), api_key_file.as_deref())
            .map(|opts| sotto_client::ClientOptions {
                timeout: Duration::from_millis(timeout_ms.max(1)),
                ..opts
            })
            .and_then(|opts| cmd::predict(&p0, &p1, &input, limit, batch.max(1), opts)),
        Command::Bench(a) => bench::run(*a),
        Command::Inspect {
            model,
            numbers,
            public_weights,
        } => inspect(&model, &numbers, !public_weights),
        Command::ShareModel {
            model,
            out,
            public_weights,
            keep_node_names,
            numbers,
        } => share_model(
            &model,
            &out,
            sotto_model::files::SetOptions {
                private: !public_weights,
                keep_node_names,
            },
            &numbers,
        ),
        Command::Plain {
            model,
            input,
            limit,
            numbers,
        } => plain(&model, &input, limit, &numbers),
        Command::Eval {
            model,
            input,
            labels,
            reference,
            batch,
            limit,
            public_weights,
            memory_budget_mb,
            numbers,
        } => eval(&EvalArgs {
            model,
            input,
            labels,
            reference,
            batch,
            limit,
            private: !public_weights,
            budget: memory_budget_mb.saturating_mul(1 << 20),
            numbers,
        }),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn load_model(path: &Path, numbers: &Numbers) -> Result<(Model, Plan), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let t = Instant::now();
    let model = import(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let fp = FixedPoint::new(numbers.frac_bits).map_err(|e| e.to_string())?;
    let calibration = match &numbers.calibrate {
        None => None,
        Some(samples) => {
            let (x, n) = data::inputs(samples, &example_shape(&model), numbers.input_bound)?;
            let x: Vec<f32> = x.iter().map(|v| *v as f32).collect();
            let c = sotto_model::Calibration::observe(&model, &x, numbers.margin)
                .map_err(|e| format!("{}: {e}", samples.display()))?;
            eprintln!(
                "calibrated on {n} samples from {} (margin {}×)",
                samples.display(),
                numbers.margin
            );
            Some(c)
        }
    };
    let plan = Plan::with_calibration(&model, fp, numbers.input_bound, calibration.as_ref())
        .map_err(|e| format!("{}: {e}", path.display()))?
        .with_fewer_rounds(numbers.fewer_rounds)
        .with_compact_comparisons(numbers.compact_comparisons);
    eprintln!(
        "imported {} in {:.1} ms",
        path.display(),
        t.elapsed().as_secs_f64() * 1e3
    );
    Ok((model, plan))
}

fn inspect(path: &Path, numbers: &Numbers, private: bool) -> Result<(), String> {
    let (model, plan) = load_model(path, numbers)?;
    let plan = plan.for_weights(private);
    println!(
        "model {}: input {} ({}), output {} elements at {} fractional bits{}; {} weights",
        path.display(),
        model.input_name,
        shape_string(&model.input_shape),
        plan.output_len,
        plan.out_frac,
        if model.softmax_at_client {
            ", softmax at the client"
        } else {
            ""
        },
        if private { "private" } else { "public" },
    );
    println!(
        "{:<28} {:<9} {:<42} {:>8} {:>11} {:>5} {:>6} {:>10} {:>12}",
        "node",
        "out/ex",
        "protocol",
        "out bits",
        "|value| <=",
        "cmp",
        "rounds",
        "online B",
        "helper B"
    );
    let mut total = sotto_model::plan::Cost::default();
    let costs = plan.step_costs(private);
    let pairs = if private {
        plan.relu_dense_pairs()
    } else {
        Vec::new()
    };
    for (i, st) in plan.steps.iter().enumerate() {
        let c = costs[i];
        total.rounds += c.rounds;
        total.online_bytes += c.online_bytes;
        total.helper_bytes += c.helper_bytes;
        let cmp = match st.kind {
            // A truncating ReLU compares the high part and the truncation's carry
            // (`k+shift`) on one opening; without a truncation it compares on its width.
            sotto_model::plan::StepKind::Relu { bits, shift }
            | sotto_model::plan::StepKind::Clip { bits, shift, .. } => {
                if shift > 0 {
                    let k = sotto_core::protocols::fused_sign_bits(bits, shift);
                    format!("{k}+{shift}")
                } else {
                    sotto_core::protocols::shifted_bits(bits, 0).to_string()
                }
            }
            sotto_model::plan::StepKind::MaxPool { bits, .. }
            | sotto_model::plan::StepKind::Piecewise { bits, .. }
            | sotto_model::plan::StepKind::LiftInput { bits } => bits.to_string(),
            _ => "-".into(),
        };
        let kind = format!("{:?}", st.kind);
        let kind = kind.split([' ', '{', '(']).next().unwrap_or("").to_string();
        println!(
            "{:<28} {:<9} {:<42} {:>8} {:>11.3e} {:>5} {:>6} {:>10} {:>12}",
            truncate_name(&st.node, 28),
            st.per_example,
            if pairs.iter().any(|(r, _)| *r == i) {
                format!("{kind}: sign + carry, select, next dense local")
            } else if pairs.iter().any(|(_, d)| *d == i) {
                format!("{kind}: product in the ReLU's gate, + bias")
            } else if plan.compact_comparisons
                && matches!(
                    st.kind,
                    sotto_model::plan::StepKind::MaxPool { .. }
                        | sotto_model::plan::StepKind::Relu { shift: 0, .. }
                        | sotto_model::plan::StepKind::Clip { shift: 0, .. }
                )
            {
                format!("{kind}: {}, one-bit keys", st.kind.protocol())
            } else {
                format!("{kind}: {}", st.kind.protocol())
            },
            st.out_frac,
            st.bound,
            cmp,
            c.rounds,
            c.online_bytes,
            c.helper_bytes
        );
    }
    println!(
        "total per prediction (batch 1): {} server rounds, {} B online per server (+ {} B input from the client to P0, 32 B to P1), {} B of helper material per server",
        total.rounds,
        total.online_bytes,
        plan.input_len
            * plan
                .input_bits()
                .map_or(8, sotto_core::share::bits_width),
        total.helper_bytes
    );
    if private {
        let load: usize = plan.weights.iter().map(|(w, _)| w.len()).sum();
        println!(
            "once per loaded model: 1 round per weight tensor, {} B per server (W − B), and 1 round of 8 B (the helper's protocol settings checked)",
            8 * load
        );
        if plan.fewer_rounds {
            println!(
                "fewer rounds: {} ReLU(s) run with the dense product after them ({} round(s) saved per prediction, for 56 B of helper material per ReLU element and output)",
                pairs.len(),
                pairs.len()
            );
        }
    } else {
        println!("once per loaded model: 1 round of 8 B (the helper's protocol settings checked)");
        if numbers.fewer_rounds {
            println!("fewer rounds: no effect with public weights (their products are local)");
        }
    }
    if plan.compact_comparisons {
        println!(
            "compact comparisons: max pools and ReLUs without a truncation compare with one-bit keys (one more round per comparison); ReLUs behind non-overlapping max pools run after them where that saves material"
        );
    } else {
        // What the opt-in setting would change, where it applies.
        let compact = plan.clone().with_compact_comparisons(true);
        let (r0, h0) = (total.rounds, total.helper_bytes);
        let (r1, h1) = compact
            .step_costs(private)
            .iter()
            .fold((0u32, 0u64), |(r, h), c| (r + c.rounds, h + c.helper_bytes));
        if h1 < h0 {
            println!(
                "with --compact-comparisons (one-bit keys for max pools and untruncated ReLUs, ReLUs after non-overlapping pools): {r1} server rounds (+{}), {h1} B of helper material per server (−{:.1} %): less computation, more round trips",
                r1 - r0,
                100.0 * (h0 - h1) as f64 / h0 as f64
            );
        }
    }
    for st in &plan.steps {
        // What an approximated activation costs in accuracy.
        if let sotto_model::plan::StepKind::Piecewise { act, in_frac, .. } = st.kind {
            if let Ok(g) = act.piecewise(in_frac, plan.fp.frac_bits()) {
                let b = match st.inputs.first() {
                    Some(&v) if v > 0 => plan.steps[v - 1].bound,
                    _ => plan.input_bound,
                };
                println!(
                    "{}: {} as {} linear pieces, max error {:.2e} for inputs within ±{b:.3e}",
                    truncate_name(&st.node, 28),
                    act.name(),
                    g.pieces(),
                    g.max_error(|x| act.eval(x), -b, b)
                );
            }
        }
    }
    if numbers.calibrate.is_some() {
        // What the calibration changed: the proven bounds next to the planned ones.
        println!(
            "calibrated bounds (margin {}×) against the proven worst case:",
            numbers.margin
        );
        let fits = |b: f64, frac: u32| b * 2f64.powi(frac as i32) < (1u64 << 61) as f64;
        for st in plan.steps.iter().filter(|s| s.proven_bound > s.bound) {
            println!(
                "  {:<28} |value| <= {:.3e} (proven {:.3e}{})",
                truncate_name(&st.node, 28),
                st.bound,
                st.proven_bound,
                if fits(st.proven_bound, st.out_frac) {
                    ""
                } else {
                    ", which does not fit the ring"
                }
            );
        }
    }
    Ok(())
}

fn share_model(
    path: &Path,
    out: &Path,
    opts: sotto_model::files::SetOptions,
    numbers: &Numbers,
) -> Result<(), String> {
    use sotto_model::files::{make_set_with, Role, SET_RECORD_FILE};
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let (_, plan) = load_model(path, numbers)?;
    let set = make_set_with(&plan, &bytes, opts).map_err(|e| e.to_string())?;
    let record = set.record.to_json().map_err(|e| e.to_string())?;
    std::fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    for (role, data) in [Role::P0, Role::P1, Role::Helper].iter().zip(&set.files) {
        let p = out.join(role.file_name());
        // Weight shares: readable by their owner only.
        cmd::write_secret(&p, data)?;
        println!(
            "{:<8} {} ({} bytes)",
            format!("{role:?}"),
            p.display(),
            data.len()
        );
    }
    let p = out.join(SET_RECORD_FILE);
    cmd::write_secret(&p, (record + "\n").as_bytes())?;
    println!(
        "{:<8} {} (the model owner's record: keep it, do not copy it to the parties' hosts)",
        "set",
        p.display()
    );
    println!("set id   {}", set.record.set_id);
    if set.record.fewer_rounds {
        println!("plan     fewer rounds (ReLU and next dense product in one gate)");
    }
    if set.record.compact_comparisons {
        println!("plan     compact comparisons (one-bit keys for max pools and untruncated ReLUs, ReLUs after non-overlapping pools)");
    }
    println!("model    SHA-256 {}", set.record.model_sha256);
    println!(
        "{} weights, {}; copy each .sotto file to its party's host only",
        if opts.private {
            "private (shared)"
        } else {
            "public"
        },
        if opts.keep_node_names {
            "ONNX node names kept in P0's and P1's files"
        } else {
            "no ONNX node names in the files"
        }
    );
    Ok(())
}

fn truncate_name(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let tail: String = s
            .chars()
            .rev()
            .take(n - 1)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        format!("…{tail}")
    }
}

struct EvalArgs {
    model: PathBuf,
    input: PathBuf,
    labels: PathBuf,
    reference: Option<PathBuf>,
    batch: usize,
    limit: Option<usize>,
    private: bool,
    /// Bytes of material one in-process prediction may hold.
    budget: u64,
    numbers: Numbers,
}

/// Reads a .npy file as f64 values and its shape (float32/64, int32/64, or uint8 pixels
/// divided by 255), through [`data::read`] (which also refuses Fortran-order arrays).
pub(crate) fn read_npy(path: &Path) -> Result<(Vec<f64>, Vec<usize>), String> {
    let mut a = data::read(path)?;
    let supported = ["<f4", "<f8", "<i8", "<i4", "|u1"];
    if !supported.contains(&a.dtype.as_str()) {
        return Err(format!(
            "{}: element type {} is not supported (float32, float64, uint8, int32, int64 are)",
            path.display(),
            a.dtype
        ));
    }
    if a.dtype == "|u1" {
        a.data.iter_mut().for_each(|v| *v /= 255.0);
    }
    Ok((a.data, a.shape))
}

/// One example's input shape of `model` (batch excluded).
fn example_shape(model: &Model) -> Vec<usize> {
    model.input_shape[1..]
        .iter()
        .map(|d| match d {
            sotto_model::Dim::Fixed(n) => *n,
            sotto_model::Dim::Batch => 1,
        })
        .collect()
}

/// True when the model's output is a sigmoid (a one-output model is then scored at 0.5).
fn sigmoid_output(model: &Model) -> bool {
    matches!(
        model.layers.last().map(|l| &l.layer),
        Some(sotto_model::Layer::Sigmoid)
    )
}

fn plain(path: &Path, input: &Path, limit: Option<usize>, numbers: &Numbers) -> Result<(), String> {
    let (model, plan) = load_model(path, numbers)?;
    let mut x: Vec<f64> = if input.extension().is_some_and(|e| e == "json") {
        let text = std::fs::read_to_string(input)
            .map_err(|e| format!("cannot read {}: {e}", input.display()))?;
        serde_json::from_str(&text)
            .map_err(|e| format!("{}: not a flat JSON array of numbers: {e}", input.display()))?
    } else {
        data::inputs(input, &example_shape(&model), numbers.input_bound)?.0
    };
    let per = plan.input_len;
    if let Some(l) = limit {
        x.truncate(l.saturating_mul(per));
    }
    if x.is_empty() || per == 0 || !x.len().is_multiple_of(per) {
        return Err(format!(
            "{} values do not make whole inputs of {per} values each",
            x.len()
        ));
    }
    if let Some(bad) = x
        .iter()
        .find(|v| !v.is_finite() || v.abs() > numbers.input_bound)
    {
        return Err(format!(
            "an input value {bad} exceeds --input-bound {}",
            numbers.input_bound
        ));
    }
    let batch = x.len() / per;
    let xs: Vec<f32> = x.iter().map(|v| *v as f32).collect();
    let float = model.forward(&xs, batch).map_err(|e| e.to_string())?;
    let enc = plan.fp.encode_f32(&xs).map_err(|e| e.to_string())?;
    let fixed: Vec<f64> = plan
        .eval_fixed(&enc, batch)
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|v| decode_with(v, plan.out_frac))
        .collect();
    let cols = plan.output_len.max(1);
    let rows = |v: &[f64]| -> Vec<Vec<f64>> { v.chunks(cols).map(<[f64]>::to_vec).collect() };
    let sig = sigmoid_output(&model);
    let labels =
        |v: &[f64]| -> Vec<usize> { v.chunks(cols).map(|r| data::predicted(r, sig)).collect() };
    let out = serde_json::json!({
        "labels": labels(&float),
        "logits": rows(&float),
        "labels_fixed": labels(&fixed),
        "logits_fixed": rows(&fixed),
    });
    println!("{out}");
    Ok(())
}

fn eval(a: &EvalArgs) -> Result<(), String> {
    let (model, plan) = load_model(&a.model, &a.numbers)?;
    let plan = plan.for_weights(a.private);
    let per = plan.input_len;
    let (x, n_all) = data::inputs(&a.input, &example_shape(&model), a.numbers.input_bound)?;
    let labels = data::labels(&a.labels, n_all, plan.output_len)?;
    let n = a.limit.map_or(n_all, |l| l.min(n_all));
    if n == 0 || a.batch == 0 {
        return Err("nothing to evaluate (no inputs, or batch 0)".into());
    }
    let reference = match &a.reference {
        Some(p) => Some(data::reference(
            p,
            n_all,
            plan.output_len,
            plan.softmax_at_client,
        )?),
        None => None,
    };
    let sig = sigmoid_output(&model);
    let fp = plan.fp;
    let cols = plan.output_len;
    let weights = share_weights(&plan, a.private).map_err(|e| e.to_string())?;
    let fit = memory::fit(&plan, a.private, a.batch.min(n), a.budget)?;
    if let Some(note) = fit.note() {
        eprintln!("{note}");
    }
    let (mut agree, mut correct_private, mut correct_float, mut agree_ref) =
        (0usize, 0usize, 0usize, 0usize);
    let mut max_err: f64 = 0.0;
    let mut max_err_ref: f64 = 0.0;
    let started = Instant::now();
    let mut done = 0;
    while done < n {
        let b = fit.batch.min(n - done);
        let xs: Vec<f32> = x[done * per..(done + b) * per]
            .iter()
            .map(|v| *v as f32)
            .collect();
        let x_enc = fp.encode_f32(&xs).map_err(|e| e.to_string())?;
        let run = run_in_process_with(&plan, [&plan, &plan], &weights, &x_enc, b, fit.window)
            .map_err(|e| format!("private prediction failed: {e}"))?;
        let private: Vec<f64> = run
            .output
            .iter()
            .map(|v| decode_with(*v, plan.out_frac))
            .collect();
        let float = model.forward(&xs, b).map_err(|e| e.to_string())?;
        for i in 0..b {
            let (pr, fl) = (
                &private[i * cols..(i + 1) * cols],
                &float[i * cols..(i + 1) * cols],
            );
            let label = labels[done + i];
            let (lp, lf) = (data::predicted(pr, sig), data::predicted(fl, sig));
            agree += usize::from(lp == lf);
            correct_private += usize::from(lp == label);
            correct_float += usize::from(lf == label);
            for (u, v) in pr.iter().zip(fl) {
                max_err = max_err.max((u - v).abs());
            }
            if let Some((r, kind)) = &reference {
                let rr = &r[(done + i) * cols..(done + i + 1) * cols];
                agree_ref += usize::from(lp == data::predicted(rr, sig));
                let mine = match kind {
                    data::Reference::Probabilities => softmax(pr, cols),
                    data::Reference::Outputs => pr.to_vec(),
                };
                for (u, v) in mine.iter().zip(rr) {
                    max_err_ref = max_err_ref.max((u - v).abs());
                }
            }
        }
        done += b;
        eprint!("\r{done}/{n} inputs");
    }
    eprintln!();
    let elapsed = started.elapsed().as_secs_f64() * 1e3;
    let mut out = serde_json::json!({
        "model": a.model.display().to_string(),
        "weights": if a.private { "private" } else { "public" },
        "n": n,
        "batch": fit.batch,
        "streamed": fit.window.is_some(),
        "frac_bits": a.numbers.frac_bits,
        "accuracy_float": correct_float as f64 / n as f64,
        "accuracy_private": correct_private as f64 / n as f64,
        "argmax_agreement": agree as f64 / n as f64,
        "max_abs_logit_error": max_err,
        "ms_per_prediction": elapsed / n as f64,
    });
    if let Some((_, kind)) = &reference {
        out["argmax_agreement_tensorflow"] = serde_json::json!(agree_ref as f64 / n as f64);
        match kind {
            data::Reference::Outputs => {
                out["max_abs_logit_error_tensorflow"] = serde_json::json!(max_err_ref);
            }
            data::Reference::Probabilities => {
                out["max_abs_probability_error_tensorflow"] = serde_json::json!(max_err_ref);
            }
        }
    }
    println!("{out}");
    Ok(())
}
