//! # sotto-fuzz
//!
//! A fuzz harness for sotto's decoders that runs on a stable toolchain (no libFuzzer, no
//! coverage feedback): each target mutates valid inputs made in memory from the public APIs
//! and the bundled models, runs the decoder under [`std::panic::catch_unwind`], and checks that
//! it returns an error rather than panicking, hanging or allocating without bound.
//!
//! | target | what runs |
//! |---|---|
//! | `frames` | `sotto_wire::decode` under five limits, every JSON payload type, the element view, encode/decode round trips |
//! | `model-files` | `sotto_model::files::read_file` for each role, with the trailing SHA-256 recomputed after most mutations; JSON-header-aware edits |
//! | `onnx` | `sotto_model::import` on byte- and protobuf-level mutations of the bundled models, then `Plan::new` |
//! | `dcf-keys` | `sotto_core::dcf::DcfKeys::from_bytes` on mutated key batches, then re-encoding and evaluation |
//!
//! ```text
//! cargo run --release -p sotto-fuzz -- --target all --cases 1000000 [--seed S] [--out DIR]
//! cargo run --release -p sotto-fuzz -- --target onnx --replay DIR/crash-onnx-17.bin
//! ```
//!
//! Randomness is a ChaCha20 stream per target (and per worker) seeded from `--seed`, or from
//! the OS when absent (the seed is printed), so a run can be repeated exactly. A panic or a
//! broken property (say, `encode(decode(b)) != b`) writes the input to
//! `DIR/crash-<target>-<case>.bin`, prints the message and makes the exit status non-zero. A
//! watchdog thread stops the run when a case takes longer than `--timeout-ms` or the process
//! grows beyond `--rss-limit-mb`, after writing the input at fault
//! (`DIR/timeout-…` or `DIR/oom-…`).

// The workspace denies `unsafe`; only sotto-core allows it, for one call (`simd`).
#![forbid(unsafe_code)]

mod dcf;
mod frames;
mod model_files;
mod mutate;
mod onnx;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{OnceLock, RwLock};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

/// What one case gives.
#[derive(Debug)]
pub enum Outcome {
    /// The input was accepted; the label says how far it went.
    Ok(String),
    /// The input was refused with this error (the expected result for most inputs).
    Error(String),
    /// A property the harness checks does not hold: a failure, like a panic.
    Property(String),
}

/// The bundled models every model target starts from.
pub const MODELS: [&str; 5] = [
    "network_a",
    "cnn",
    "logistic",
    // a residual network and padded pooling, from the Keras zoo (steps reading earlier values)
    "../tests/fixtures/zoo/mini_resnet",
    "../tests/fixtures/zoo/padded_pool",
];

static MODELS_DIR: OnceLock<PathBuf> = OnceLock::new();

/// Reads and imports a bundled model.
pub fn load_model(name: &str) -> Result<(Vec<u8>, sotto_model::Model), String> {
    let dir = MODELS_DIR.get_or_init(default_models_dir);
    let path = dir.join(format!("{name}.onnx"));
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let model =
        sotto_model::import(&bytes).map_err(|e| format!("importing {}: {e}", path.display()))?;
    Ok((bytes, model))
}

fn default_models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TargetArg {
    Frames,
    ModelFiles,
    Onnx,
    DcfKeys,
    All,
}

/// Fuzzes sotto's decoders: every input must give an error, never a panic, a hang or an
/// unbounded allocation.
#[derive(Debug, Parser)]
#[command(name = "sotto-fuzz", version)]
struct Args {
    /// Which target to run.
    #[arg(long, value_enum, default_value = "all")]
    target: TargetArg,
    /// Cases per target.
    #[arg(long, default_value_t = 100_000)]
    cases: u64,
    /// Seed of the ChaCha20 streams (random, and printed, when absent).
    #[arg(long)]
    seed: Option<u64>,
    /// Directory for crash, timeout and out-of-memory inputs.
    #[arg(long, default_value = "fuzz-out")]
    out: PathBuf,
    /// Runs one saved input through `--target` and prints what happens.
    #[arg(long, value_name = "FILE")]
    replay: Option<PathBuf>,
    /// Worker threads per target (each with its own stream).
    #[arg(long, default_value_t = 1)]
    jobs: u64,
    /// A case running longer than this stops the run (the input is saved).
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// Resident memory above this stops the run (the input at fault is saved).
    #[arg(long, default_value_t = 4096)]
    rss_limit_mb: u64,
    /// Also save the slowest input of each target as DIR/slowest-<target>.bin.
    #[arg(long)]
    save_slowest: bool,
    /// model-files: also run `Plan::eval_fixed` on accepted server files (small plans only).
    #[arg(long)]
    deep: bool,
    /// The directory holding network_a.onnx, cnn.onnx and logistic.onnx.
    #[arg(long)]
    models: Option<PathBuf>,
}

/// A target with its seeds.
enum Harness {
    Frames(frames::Frames),
    ModelFiles(model_files::ModelFiles),
    Onnx(onnx::Onnx),
    Dcf(dcf::Dcf),
}

impl Harness {
    fn new(t: TargetArg) -> Result<Harness, String> {
        Ok(match t {
            TargetArg::Frames => Harness::Frames(frames::Frames::new()?),
            TargetArg::ModelFiles => {
                let m = model_files::ModelFiles::new()?;
                if !m.checksum_ok {
                    eprintln!("warning: the model files do not end with a SHA-256 of their contents any more; mutated files will rarely get past the checksum");
                }
                Harness::ModelFiles(m)
            }
            TargetArg::Onnx => Harness::Onnx(onnx::Onnx::new()?),
            TargetArg::DcfKeys => Harness::Dcf(dcf::Dcf::new()?),
            TargetArg::All => return Err("not a single target".into()),
        })
    }

    fn describe(&self) -> Vec<String> {
        match self {
            Harness::Frames(h) => h.describe(),
            Harness::ModelFiles(h) => h.describe(),
            Harness::Onnx(h) => h.describe(),
            Harness::Dcf(h) => h.describe(),
        }
    }

    fn generate(&self, rng: &mut ChaCha20Rng, pool: &[Vec<u8>], out: &mut Vec<u8>) {
        match self {
            Harness::Frames(h) => h.generate(rng, pool, out),
            Harness::ModelFiles(h) => h.generate(rng, pool, out),
            Harness::Onnx(h) => h.generate(rng, pool, out),
            Harness::Dcf(h) => h.generate(rng, pool, out),
        }
    }
}

fn run_target(t: TargetArg, bytes: &[u8]) -> Outcome {
    match t {
        TargetArg::Frames => frames::run(bytes),
        TargetArg::ModelFiles => model_files::run(bytes),
        TargetArg::Onnx => onnx::run(bytes),
        TargetArg::DcfKeys => dcf::run(bytes),
        TargetArg::All => Outcome::Error("no target".into()),
    }
}

fn name(t: TargetArg) -> &'static str {
    match t {
        TargetArg::Frames => "frames",
        TargetArg::ModelFiles => "model-files",
        TargetArg::Onnx => "onnx",
        TargetArg::DcfKeys => "dcf-keys",
        TargetArg::All => "all",
    }
}

thread_local! {
    /// The message of the last panic on this thread, set by the panic hook.
    static LAST_PANIC: RefCell<Option<Panic>> = const { RefCell::new(None) };
    /// True while [`guarded`] runs code under test on this thread.
    static IN_GUARD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Backtraces are captured for the first few panics only (they cost milliseconds).
static BACKTRACES_LEFT: AtomicUsize = AtomicUsize::new(5);

#[derive(Debug, Clone)]
struct Panic {
    /// `file:line:column`.
    location: String,
    message: String,
    backtrace: Option<String>,
}

/// Records panics instead of printing them (a run may meet thousands).
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        if !IN_GUARD.with(std::cell::Cell::get) {
            // a panic of the harness itself: say so
            eprintln!("sotto-fuzz: internal panic: {info}");
            return;
        }
        let location = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
            .unwrap_or_else(|| "unknown location".into());
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(non-string panic payload)".into());
        let backtrace = (BACKTRACES_LEFT
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok())
        .then(|| std::backtrace::Backtrace::force_capture().to_string());
        LAST_PANIC.with(|p| {
            *p.borrow_mut() = Some(Panic {
                location,
                message,
                backtrace,
            })
        });
    }));
}

/// Runs `f`, turning a panic into the [`Panic`] the hook recorded.
fn guarded(f: impl FnOnce() -> Outcome) -> Result<Outcome, Panic> {
    IN_GUARD.with(|g| g.set(true));
    let r = catch_unwind(AssertUnwindSafe(f));
    IN_GUARD.with(|g| g.set(false));
    r.map_err(|_| take_panic())
}

fn take_panic() -> Panic {
    LAST_PANIC.with(|p| p.borrow_mut().take()).unwrap_or(Panic {
        location: "unknown".into(),
        message: "(no message recorded)".into(),
        backtrace: None,
    })
}

/// A coarse kind of an error or label: numbers become `N`, quoted text `…`, at most 110
/// characters.
fn kind_of(s: &str) -> String {
    let mut out = String::new();
    let mut quote: Option<char> = None;
    let mut last_digit = false;
    for c in s.chars() {
        if let Some(q) = quote {
            if c == q {
                quote = None;
                out.push(q);
            }
            continue;
        }
        match c {
            '"' | '`' => {
                quote = Some(c);
                out.push(c);
                out.push('…');
                last_digit = false;
            }
            '0'..='9' => {
                if !last_digit {
                    out.push('N');
                }
                last_digit = true;
            }
            _ => {
                out.push(c);
                last_digit = false;
            }
        }
        if out.chars().count() >= 110 {
            out.push('…');
            break;
        }
    }
    out
}

/// What a worker shares with the watchdog.
struct Slot {
    /// Case being run.
    case: AtomicU64,
    /// Start of the case in microseconds since the run began, plus one; 0 when idle.
    started: AtomicU64,
    /// The input being run.
    input: RwLock<Vec<u8>>,
}

#[derive(Debug, Default)]
struct Stats {
    cases: u64,
    ok: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
    failures: BTreeMap<String, (u64, Option<PathBuf>, String)>,
    slowest: Option<(Duration, u64, Vec<u8>)>,
}

impl Stats {
    fn merge(&mut self, o: Stats) {
        self.cases += o.cases;
        for (k, v) in o.ok {
            *self.ok.entry(k).or_default() += v;
        }
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
        for (k, v) in o.failures {
            let e = self.failures.entry(k).or_insert((0, None, v.2.clone()));
            e.0 += v.0;
            if e.1.is_none() {
                e.1 = v.1;
            }
        }
        if let Some(s) = o.slowest {
            if self.slowest.as_ref().is_none_or(|m| s.0 > m.0) {
                self.slowest = Some(s);
            }
        }
    }
}

/// Most inputs saved per distinct failure.
const SAVED_PER_FAILURE: u64 = 10;
/// Earlier accepted inputs kept per worker to mutate further.
const POOL: usize = 64;
/// Largest input kept in the pool (larger ones cost more to hash and copy than they add).
const POOL_MAX_INPUT: usize = 256 << 10;

fn write_input(dir: &Path, file: &str, bytes: &[u8]) -> Option<PathBuf> {
    let path = dir.join(file);
    match std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, bytes)) {
        Ok(()) => Some(path),
        Err(e) => {
            eprintln!("cannot write {}: {e}", path.display());
            None
        }
    }
}

struct Run<'a> {
    target: TargetArg,
    harness: &'a Harness,
    cases: u64,
    jobs: u64,
    seed: u64,
    out: &'a Path,
    done: AtomicU64,
    begin: Instant,
}

impl Run<'_> {
    fn worker(&self, w: u64, slot: &Slot) -> Stats {
        let tname = name(self.target);
        let mut rng = ChaCha20Rng::seed_from_u64(self.seed);
        rng.set_stream(((self.target as u64) << 32) | w);
        let mut stats = Stats::default();
        let mut pool: Vec<Vec<u8>> = Vec::new();
        let mut buf = Vec::new();
        let mine = self.cases / self.jobs + u64::from(w < self.cases % self.jobs);
        let step = (self.cases / 10).max(1);
        for i in 0..mine {
            let case = i * self.jobs + w;
            self.harness.generate(&mut rng, &pool, &mut buf);
            {
                let mut g = slot.input.write().unwrap_or_else(|e| e.into_inner());
                std::mem::swap(&mut *g, &mut buf);
            }
            let input = slot.input.read().unwrap_or_else(|e| e.into_inner());
            slot.case.store(case, Ordering::Relaxed);
            let t0 = Instant::now();
            slot.started.store(
                t0.duration_since(self.begin).as_micros() as u64 + 1,
                Ordering::Relaxed,
            );
            let res = guarded(|| run_target(self.target, &input));
            let dt = t0.elapsed();
            slot.started.store(0, Ordering::Relaxed);
            stats.cases += 1;
            let failure = match res {
                Ok(Outcome::Ok(label)) => {
                    *stats.ok.entry(kind_of(&label)).or_default() += 1;
                    if input.len() <= POOL_MAX_INPUT {
                        if pool.len() < POOL {
                            pool.push(input.clone());
                        } else if rng.next_u32() % 8 == 0 {
                            let j = mutate::below(&mut rng, POOL);
                            pool[j] = input.clone();
                        }
                    }
                    None
                }
                Ok(Outcome::Error(e)) => {
                    *stats.errors.entry(kind_of(&e)).or_default() += 1;
                    None
                }
                Ok(Outcome::Property(p)) => Some((
                    format!("property: {}", kind_of(&p)),
                    format!("property violated: {p}"),
                    None,
                )),
                Err(p) => Some((
                    format!("panic at {}: {}", p.location, kind_of(&p.message)),
                    format!("panicked at {}: {}", p.location, p.message),
                    p.backtrace,
                )),
            };
            if let Some((key, message, backtrace)) = failure {
                let e = stats
                    .failures
                    .entry(key)
                    .or_insert((0, None, message.clone()));
                e.0 += 1;
                if e.0 <= SAVED_PER_FAILURE {
                    let path = write_input(self.out, &format!("crash-{tname}-{case}.bin"), &input);
                    let shown = path
                        .as_ref()
                        .map_or("(not saved)".into(), |p| p.display().to_string());
                    println!("[{tname}] FAILURE on case {case} ({} bytes): {message}\n[{tname}]   input saved to {shown}", input.len());
                    if let Some(bt) = backtrace {
                        println!("[{tname}]   backtrace:\n{bt}");
                    }
                    if e.1.is_none() {
                        e.1 = path;
                    }
                }
            }
            if stats.slowest.as_ref().is_none_or(|s| dt > s.0) {
                stats.slowest = Some((dt, case, input.to_vec()));
            }
            drop(input);
            let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
            if done.is_multiple_of(step) || done == self.cases {
                let secs = self.begin.elapsed().as_secs_f64();
                println!(
                    "[{tname}] {:>3}% {done}/{} cases, {:.0} cases/s, {:.1} s",
                    done * 100 / self.cases.max(1),
                    self.cases,
                    done as f64 / secs.max(1e-9),
                    secs
                );
            }
        }
        stats
    }
}

/// Resident memory of this process in bytes (Linux; 0 elsewhere).
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// Watches the workers: a case over the timeout or memory over the limit stops the process
/// after the input at fault is written.
fn watchdog(
    tname: &str,
    slots: &[Slot],
    stop: &AtomicBool,
    begin: Instant,
    timeout: Duration,
    rss_limit: u64,
    out: &Path,
) {
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
        let now = begin.elapsed().as_micros() as u64 + 1;
        let rss = rss_bytes();
        for s in slots {
            let started = s.started.load(Ordering::Relaxed);
            let over_time =
                started != 0 && now.saturating_sub(started) > timeout.as_micros() as u64;
            let over_mem = rss > rss_limit && started != 0;
            if !(over_time || over_mem) {
                continue;
            }
            let case = s.case.load(Ordering::Relaxed);
            let what = if over_time { "timeout" } else { "oom" };
            let input = s.input.read().unwrap_or_else(|e| e.into_inner());
            let path = write_input(out, &format!("{what}-{tname}-{case}.bin"), &input);
            println!(
                "[{tname}] FAILURE: case {case} ({} bytes) {}; input saved to {}",
                input.len(),
                if over_time {
                    format!("has run for more than {} ms", timeout.as_millis())
                } else {
                    format!(
                        "while the process holds {} MiB (limit {} MiB)",
                        rss >> 20,
                        rss_limit >> 20
                    )
                },
                path.map_or("(not saved)".into(), |p| p.display().to_string())
            );
            std::process::exit(3);
        }
    }
}

fn fuzz(t: TargetArg, args: &Args, seed: u64) -> Result<bool, String> {
    let tname = name(t);
    let t_setup = Instant::now();
    let harness = Harness::new(t).map_err(|e| format!("[{tname}] seeds: {e}"))?;
    println!(
        "[{tname}] seeds ready in {:.2} s:",
        t_setup.elapsed().as_secs_f64()
    );
    for d in harness.describe() {
        println!("[{tname}]   {d}");
    }
    let jobs = args.jobs.max(1);
    let run = Run {
        target: t,
        harness: &harness,
        cases: args.cases,
        jobs,
        seed,
        out: &args.out,
        done: AtomicU64::new(0),
        begin: Instant::now(),
    };
    let slots: Vec<Slot> = (0..jobs)
        .map(|_| Slot {
            case: AtomicU64::new(0),
            started: AtomicU64::new(0),
            input: RwLock::new(Vec::new()),
        })
        .collect();
    let stop = AtomicBool::new(false);
    let mut stats = Stats::default();
    std::thread::scope(|sc| {
        let dog = sc.spawn(|| {
            watchdog(
                tname,
                &slots,
                &stop,
                run.begin,
                Duration::from_millis(args.timeout_ms),
                args.rss_limit_mb << 20,
                &args.out,
            )
        });
        let workers: Vec<_> = slots
            .iter()
            .enumerate()
            .map(|(w, slot)| {
                let run = &run;
                sc.spawn(move || run.worker(w as u64, slot))
            })
            .collect();
        for h in workers {
            match h.join() {
                Ok(s) => stats.merge(s),
                Err(_) => eprintln!("[{tname}] a worker thread died"),
            }
        }
        stop.store(true, Ordering::Relaxed);
        let _ = dog.join();
    });
    let secs = run.begin.elapsed().as_secs_f64();
    report(t, &stats, secs, args);
    Ok(stats.failures.is_empty())
}

fn report(t: TargetArg, stats: &Stats, secs: f64, args: &Args) {
    let tname = name(t);
    let pct = |n: u64| 100.0 * n as f64 / stats.cases.max(1) as f64;
    let ok: u64 = stats.ok.values().sum();
    let err: u64 = stats.errors.values().sum();
    let failed: u64 = stats.failures.values().map(|f| f.0).sum();
    println!("== {tname}: summary");
    println!(
        "   {} cases in {secs:.1} s: {:.0} cases/s",
        stats.cases,
        stats.cases as f64 / secs.max(1e-9)
    );
    let top = |m: &BTreeMap<String, u64>, title: &str, total: u64| {
        println!("   {title}: {total} ({:.2}%)", pct(total));
        let mut v: Vec<_> = m.iter().collect();
        v.sort_by(|a, b| b.1.cmp(a.1));
        for (k, n) in v.iter().take(14) {
            println!("     {n:>9}  {k}");
        }
        if v.len() > 14 {
            let rest: u64 = v[14..].iter().map(|(_, n)| **n).sum();
            println!("     {rest:>9}  ({} other kinds)", v.len() - 14);
        }
    };
    top(&stats.ok, "accepted", ok);
    top(&stats.errors, "errors by kind", err);
    if let Some((d, case, input)) = &stats.slowest {
        let saved = if args.save_slowest {
            write_input(&args.out, &format!("slowest-{tname}.bin"), input)
                .map(|p| format!(", saved to {}", p.display()))
                .unwrap_or_default()
        } else {
            String::new()
        };
        // Timed again, so that a case slowed down by the machine (another process, the
        // scheduler) shows as such: the best of three runs.
        let again = (0..3)
            .map(|_| {
                let t0 = Instant::now();
                let _ = guarded(|| run_target(t, input));
                t0.elapsed()
            })
            .min()
            .unwrap_or_default();
        println!(
            "   slowest case: #{case}, {:.3} ms, {} bytes (timed again: {:.3} ms){saved}",
            d.as_secs_f64() * 1e3,
            input.len(),
            again.as_secs_f64() * 1e3
        );
    }
    if stats.failures.is_empty() {
        println!("   panics and property failures: none");
    } else {
        println!(
            "   FAILURES: {failed} cases, {} distinct:",
            stats.failures.len()
        );
        for (n, path, message) in stats.failures.values() {
            println!(
                "     {n:>9}  {message}\n                first input: {}",
                path.as_ref()
                    .map_or("(not saved)".into(), |p| p.display().to_string())
            );
        }
    }
}

fn replay(t: TargetArg, file: &Path, args: &Args) -> Result<bool, String> {
    let bytes = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let tname = name(t);
    println!("[{tname}] {} ({} bytes):", file.display(), bytes.len());
    // The same watchdog as a run: a hang or a runaway allocation is reported, not endured.
    let slot = Slot {
        case: AtomicU64::new(0),
        started: AtomicU64::new(1),
        input: RwLock::new(bytes),
    };
    let stop = AtomicBool::new(false);
    let begin = Instant::now();
    let (res, ms) = std::thread::scope(|sc| {
        let dog = sc.spawn(|| {
            watchdog(
                tname,
                std::slice::from_ref(&slot),
                &stop,
                begin,
                Duration::from_millis(args.timeout_ms),
                args.rss_limit_mb << 20,
                &args.out,
            )
        });
        let input = slot.input.read().unwrap_or_else(|e| e.into_inner());
        let res = guarded(|| run_target(t, &input));
        let ms = begin.elapsed().as_secs_f64() * 1e3;
        stop.store(true, Ordering::Relaxed);
        let _ = dog.join();
        (res, ms)
    });
    println!("  ran in {ms:.3} ms");
    Ok(match res {
        Ok(Outcome::Ok(l)) => {
            println!("  accepted: {l}");
            true
        }
        Ok(Outcome::Error(e)) => {
            println!("  refused with an error (as it should): {e}");
            true
        }
        Ok(Outcome::Property(p)) => {
            println!("  PROPERTY VIOLATED: {p}");
            false
        }
        Err(p) => {
            println!("  PANICKED at {}: {}", p.location, p.message);
            if let Some(bt) = p.backtrace {
                println!("{bt}");
            }
            false
        }
    })
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if let Some(dir) = &args.models {
        let _ = MODELS_DIR.set(dir.clone());
    }
    install_panic_hook();
    model_files::DEEP.store(args.deep, Ordering::Relaxed);
    let result = if let Some(file) = &args.replay {
        if args.target == TargetArg::All {
            Err("--replay needs one --target (frames, model-files, onnx or dcf-keys)".into())
        } else {
            replay(args.target, file, &args)
        }
    } else {
        let seed = match args.seed {
            Some(s) => s,
            None => getrandom::u64().unwrap_or_else(|_| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64)
            }),
        };
        println!(
            "sotto-fuzz: seed {seed} (repeat with --seed {seed}), {} cases per target, {} job(s), failures to {}",
            args.cases,
            args.jobs.max(1),
            args.out.display()
        );
        let targets = match args.target {
            TargetArg::All => vec![
                TargetArg::Frames,
                TargetArg::DcfKeys,
                TargetArg::ModelFiles,
                TargetArg::Onnx,
            ],
            t => vec![t],
        };
        let mut all_ok = true;
        let mut err = None;
        for t in targets {
            match fuzz(t, &args, seed) {
                Ok(ok) => all_ok &= ok,
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        err.map_or(Ok(all_ok), Err)
    };
    match result {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => {
            println!("sotto-fuzz: FAILURES found (see above)");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("sotto-fuzz: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_is_caught_with_its_message_and_location() {
        install_panic_hook();
        let p = guarded(|| panic!("boom {}", 7)).expect_err("panics");
        assert_eq!(p.message, "boom 7");
        assert!(p.location.contains("main.rs"), "{}", p.location);
        assert!(matches!(
            guarded(|| Outcome::Error("e".into())),
            Ok(Outcome::Error(_))
        ));
    }

    #[test]
    fn kinds_hide_numbers_and_quoted_text() {
        assert_eq!(
            kind_of("header: invalid value: integer `-1`, expected usize at line 1 column 345"),
            "header: invalid value: integer `…`, expected usize at line N column N"
        );
        assert_eq!(
            kind_of("node \"conv_7\" (Conv): 12 bytes"),
            "node \"…\" (Conv): N bytes"
        );
    }

    /// Every seed is valid for its target, and a few thousand mutated cases of each target
    /// run without a failure (a smoke test; the real runs are `sotto-fuzz --cases N`).
    #[test]
    fn seeds_are_accepted_and_a_short_run_passes() {
        install_panic_hook();
        for t in [
            TargetArg::Frames,
            TargetArg::DcfKeys,
            TargetArg::ModelFiles,
            TargetArg::Onnx,
        ] {
            let h = Harness::new(t).expect("seeds");
            let mut rng = ChaCha20Rng::seed_from_u64(1);
            let mut buf = Vec::new();
            let mut accepted = 0;
            for _ in 0..300 {
                h.generate(&mut rng, &[], &mut buf);
                match guarded(|| run_target(t, &buf)) {
                    Ok(Outcome::Ok(_)) => accepted += 1,
                    Ok(Outcome::Error(_)) => {}
                    Ok(Outcome::Property(p)) => panic!("{}: property: {p}", name(t)),
                    Err(p) => panic!("{}: panic at {}: {}", name(t), p.location, p.message),
                }
            }
            assert!(accepted > 0, "{}: no mutated input accepted", name(t));
        }
    }
}
