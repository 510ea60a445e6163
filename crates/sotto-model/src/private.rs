//! Running a [`Plan`] with the three-party protocols of `sotto-core`.
//!
//! The helper runs [`deal_load`] once per loaded model and [`deal_predict`] per prediction;
//! each server runs [`load`] and [`predict`] in the same order. In private-weights mode the
//! servers hold additive shares of the weights ([`share_weights`]); in public-weights mode
//! both hold them in the clear and only the input is private.

use sotto_core::prg::Prg;
use sotto_core::protocols as p;
use sotto_core::session::{Dealer, Server};
use sotto_core::share;
use sotto_core::transport::Transport;

use crate::error::{ModelError, Result};
use crate::interp::{walk, Backend, Gate};
use crate::plan::{core_err, Plan};

/// What one server holds of a model's weights.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerWeights {
    /// True when the weights are shares (private-weights mode).
    pub private: bool,
    /// Per dense layer: weights (`f` bits) and bias (`2f` bits), shares or plain.
    pub dense: Vec<(Vec<u64>, Vec<u64>)>,
}

impl std::fmt::Debug for ServerWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ServerWeights(private: {}, {} dense layers)",
            self.private,
            self.dense.len()
        )
    }
}

/// Splits the plan's weights for P0 and P1: fresh additive shares (private mode, randomness
/// from the OS) or the plain weights for both (public mode).
pub fn share_weights(plan: &Plan, private: bool) -> Result<[ServerWeights; 2]> {
    if !private {
        let w = ServerWeights {
            private,
            dense: plan.weights.clone(),
        };
        return Ok([w.clone(), w]);
    }
    let mut prg = Prg::from_os().map_err(core_err)?;
    let mut out = [Vec::new(), Vec::new()];
    for (w, b) in &plan.weights {
        let (w0, w1) = share::share(w, &mut prg);
        let (b0, b1) = share::share(b, &mut prg);
        out[0].push((w0, b0));
        out[1].push((w1, b1));
    }
    let [d0, d1] = out;
    Ok([
        ServerWeights { private, dense: d0 },
        ServerWeights { private, dense: d1 },
    ])
}

/// A server's loaded model: its weights and, in private mode, the opened masks.
#[derive(Debug)]
pub struct Loaded {
    weights: ServerWeights,
    private: Vec<p::PrivateWeight>,
}

/// The helper's loaded model: the weight masks of private mode.
#[derive(Debug)]
pub struct HelperLoaded {
    private: bool,
    masks: Vec<p::WeightMask>,
}

/// Helper side of [`load`].
pub async fn deal_load<T: Transport>(
    d: &mut Dealer<T>,
    plan: &Plan,
    private: bool,
) -> Result<HelperLoaded> {
    let mut masks = Vec::new();
    if private {
        for len in plan.weight_lens() {
            masks.push(p::deal_weight_mask(d, len).await.map_err(core_err)?);
        }
    }
    // The settings that change the protocol, for the servers to check against theirs.
    p::deal_word(d, protocol_word(plan))
        .await
        .map_err(core_err)?;
    Ok(HelperLoaded { private, masks })
}

/// The plan's settings that change which gates run, as one word all three parties must
/// hold the same (bit 0: [`Plan::fewer_rounds`], bit 1: [`Plan::compact_comparisons`]).
fn protocol_word(plan: &Plan) -> u64 {
    u64::from(plan.fewer_rounds) | u64::from(plan.compact_comparisons) << 1
}

/// Opens the word the helper dealt at load ([`protocol_word`] of its plan) and refuses to go
/// on when it is not this server's: parties whose files disagree on a setting that changes
/// the protocol would otherwise run different gates.
async fn check_protocol_word<T: Transport>(s: &mut Server<T>, plan: &Plan) -> Result<()> {
    let theirs = p::open_dealt_word(s).await.map_err(core_err)?;
    let mine = protocol_word(plan);
    if theirs == mine {
        return Ok(());
    }
    let says = |w: u64| {
        let on = |bit: u64, name: &str| {
            format!(
                "{} {name}",
                if w >> bit & 1 == 1 { "with" } else { "without" }
            )
        };
        format!(
            "{} and {}",
            on(0, "the \"fewer rounds\" gates"),
            on(1, "compact comparisons")
        )
    };
    Err(ModelError::File(format!(
        "the helper's model file plans {} but {:?}'s plans {}; make the three files with one `sotto share-model` run (--fewer-rounds and --compact-comparisons for all or for none)",
        says(theirs),
        s.id(),
        says(mine)
    )))
}

/// Loads a model on a server: in private mode opens `W − B` once per dense layer; in either
/// mode then opens the word of the helper's protocol settings, which must equal this plan's
/// (one round of 8 bytes).
pub async fn load<T: Transport>(
    s: &mut Server<T>,
    plan: &Plan,
    weights: ServerWeights,
) -> Result<Loaded> {
    let lens = plan.weight_lens();
    let blens = plan.bias_lens();
    let fits = weights.dense.len() == lens.len()
        && weights
            .dense
            .iter()
            .zip(lens.iter().zip(&blens))
            .all(|((w, b), (lw, lb))| w.len() == *lw && b.len() == *lb);
    if !fits {
        return Err(ModelError::Graph(
            "the weights do not fit the plan's layers (a model file of another model?)".into(),
        ));
    }
    let mut private = Vec::new();
    if weights.private {
        for (w, _) in &weights.dense {
            private.push(p::load_private_weight(s, w).await.map_err(core_err)?);
        }
    }
    check_protocol_word(s, plan).await?;
    Ok(Loaded { weights, private })
}

/// Helper side of [`predict`]: each step's gate dealt in turn ([`Step::gate`]).
///
/// [`Step::gate`]: crate::plan::Step::gate
pub async fn deal_predict<T: Transport>(
    d: &mut Dealer<T>,
    plan: &Plan,
    h: &HelperLoaded,
    batch: usize,
) -> Result<()> {
    for gate in plan.gates(batch)? {
        deal_gate(d, h, &gate).await?;
    }
    Ok(())
}

/// Deals one gate's material (nothing for a local gate, or a product with public weights).
async fn deal_gate<T: Transport>(d: &mut Dealer<T>, h: &HelperLoaded, gate: &Gate) -> Result<()> {
    match gate {
        Gate::Local => Ok(()),
        Gate::Lift { n, bits } => p::deal_lift(d, *n, *bits).await,
        Gate::Product { op, weight } => {
            if !h.private {
                return Ok(());
            }
            let mask = h.masks.get(*weight).ok_or_else(|| no_weight(*weight))?;
            p::deal_bilinear_private(d, op, mask).await
        }
        Gate::MaxPool { shape, bits, mode } => p::deal_maxpool_with(d, shape, *bits, *mode).await,
        Gate::AvgPool { shape } => p::deal_avgpool(d, shape).await,
        Gate::Truncate { n, f } => p::deal_truncate(d, *n, *f).await,
        Gate::Relu {
            n,
            shift,
            bits,
            mode,
        } => p::deal_relu_with(d, *n, *shift, *bits, *mode).await,
        Gate::ReluDense {
            shift,
            bits,
            op,
            weight,
        } => {
            if !h.private {
                return Err(fewer_rounds_public());
            }
            let mask = h.masks.get(*weight).ok_or_else(|| no_weight(*weight))?;
            p::deal_relu_dense(d, *shift, *bits, op, mask).await
        }
        Gate::Piecewise { n, g, bits } => p::deal_piecewise(d, *n, g, *bits).await,
    }
    .map_err(core_err)
}

fn fewer_rounds_public() -> ModelError {
    ModelError::Input(
        "a \"fewer rounds\" ReLU-and-dense gate with public weights (the setting needs private weights)".into(),
    )
}

/// A server's private weight `weight` for a [`Gate::ReluDense`] (which needs private
/// weights).
fn relu_dense_weight(m: &Loaded, weight: usize) -> Result<&p::PrivateWeight> {
    if !m.weights.private {
        return Err(fewer_rounds_public());
    }
    m.private.get(weight).ok_or_else(|| no_weight(weight))
}

fn no_weight(w: usize) -> ModelError {
    ModelError::Input(format!(
        "the layer of weight tensor {w} has no loaded weight"
    ))
}

/// The input-independent part of a prediction, done ahead: the material of the first steps
/// (up to the first step without an offline part) received and parsed, and `op(A_i, F) + C_i`
/// of each private product computed. [`finish_predict`] completes it once the input is there.
pub struct PreparedPrediction {
    batch: usize,
    session: u128,
    steps: Vec<PreparedStep>,
}

enum PreparedStep {
    Product(p::PreparedProduct),
    ReluDense(Box<p::PreparedReluDense>),
    Relu(Box<p::PreparedRelu>),
    MaxPool(p::PreparedMaxpool),
    Truncate(p::PreparedTruncate),
    Lift(p::PreparedLift),
    /// A step without helper material (public product, transpose, sum, concatenation).
    Local,
}

impl std::fmt::Debug for PreparedPrediction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PreparedPrediction(batch {}, {} steps prepared)",
            self.batch,
            self.steps.len()
        )
    }
}

impl PreparedPrediction {
    /// The batch size it was prepared for.
    pub fn batch(&self) -> usize {
        self.batch
    }
}

/// Offline part of [`predict`] for `batch` inputs: call it on a started session before the
/// input arrives (the helper's material must be dealt), then [`finish_predict`]. A streamed
/// session ([`Server::is_streamed`]) prepares nothing: its material is taken as the steps
/// run, so that the server never holds more of it than the helper's window.
pub async fn prepare_predict<T: Transport>(
    s: &mut Server<T>,
    plan: &Plan,
    m: &Loaded,
    batch: usize,
) -> Result<PreparedPrediction> {
    let mut steps = Vec::new();
    if !s.is_streamed() {
        for gate in plan.gates(batch)? {
            if !gate.has_offline_part() {
                // Not prepared: this step and every later one run online, in order.
                break;
            }
            steps.push(prepare_gate(s, m, &gate).await?);
        }
    }
    Ok(PreparedPrediction {
        batch,
        session: s.session(),
        steps,
    })
}

/// Receives and preprocesses one gate's material (a gate with an offline part).
async fn prepare_gate<T: Transport>(
    s: &mut Server<T>,
    m: &Loaded,
    gate: &Gate,
) -> Result<PreparedStep> {
    Ok(match gate {
        Gate::Lift { n, bits } => {
            PreparedStep::Lift(p::prepare_lift(s, *n, *bits).await.map_err(core_err)?)
        }
        Gate::Product { op, weight } if m.weights.private => {
            let w = m.private.get(*weight).ok_or_else(|| no_weight(*weight))?;
            PreparedStep::Product(
                p::prepare_bilinear_private(s, op, w)
                    .await
                    .map_err(core_err)?,
            )
        }
        Gate::Local | Gate::Product { .. } => PreparedStep::Local,
        Gate::Truncate { n, f } => {
            PreparedStep::Truncate(p::prepare_truncate(s, *n, *f).await.map_err(core_err)?)
        }
        Gate::Relu {
            n,
            shift,
            bits,
            mode,
        } => PreparedStep::Relu(Box::new(
            p::prepare_relu_with(s, *n, *shift, *bits, *mode)
                .await
                .map_err(core_err)?,
        )),
        Gate::MaxPool { shape, bits, mode } => PreparedStep::MaxPool(
            p::prepare_maxpool_with(s, shape, *bits, *mode)
                .await
                .map_err(core_err)?,
        ),
        Gate::AvgPool { shape } => {
            PreparedStep::Truncate(p::prepare_avgpool(s, shape).await.map_err(core_err)?)
        }
        Gate::ReluDense {
            shift,
            bits,
            op,
            weight,
        } => {
            let w = relu_dense_weight(m, *weight)?;
            PreparedStep::ReluDense(Box::new(
                p::prepare_relu_dense(s, *shift, *bits, op, w)
                    .await
                    .map_err(core_err)?,
            ))
        }
        Gate::Piecewise { .. } => {
            return Err(ModelError::Graph(
                "a piecewise-linear gate has no offline part to prepare".into(),
            ))
        }
    })
}

/// Runs a prediction on this server's share `x` of `batch` inputs; returns its share of the
/// output (with `plan.out_frac` fractional bits). The same as [`prepare_predict`] followed by
/// [`finish_predict`].
pub async fn predict<T: Transport>(
    s: &mut Server<T>,
    plan: &Plan,
    m: &Loaded,
    x: Vec<u64>,
    batch: usize,
) -> Result<Vec<u64>> {
    check_input(plan, &x, batch)?;
    let prep = prepare_predict(s, plan, m, batch).await?;
    finish_predict(s, plan, m, prep, x).await
}

/// Receives the client's input of `batch` examples as the plan takes it: the range sharing of
/// the `k`-bit codes when it enforces the input range ([`Plan::input_bits`]; what its lift
/// step reads), additive shares otherwise. What [`finish_predict`] takes as `x`.
pub async fn receive_input<T: Transport>(
    s: &Server<T>,
    plan: &Plan,
    batch: usize,
) -> Result<Vec<u64>> {
    let n = batch
        .checked_mul(plan.input_len)
        .ok_or_else(|| ModelError::Input(format!("a batch of {batch} is too large")))?;
    match plan.input_bits() {
        Some(k) => s.receive_input_bits(n, k).await,
        None => s.receive_input(n).await,
    }
    .map_err(core_err)
}

fn check_input(plan: &Plan, x: &[u64], batch: usize) -> Result<()> {
    if batch == 0 || Some(x.len()) != batch.checked_mul(plan.input_len) {
        return Err(ModelError::Input(format!(
            "{} values for {batch} inputs of {} elements",
            x.len(),
            plan.input_len
        )));
    }
    Ok(())
}

/// Online part of [`predict`]: the prepared steps with the input `x`, then the rest.
pub async fn finish_predict<T: Transport>(
    s: &mut Server<T>,
    plan: &Plan,
    m: &Loaded,
    prep: PreparedPrediction,
    x: Vec<u64>,
) -> Result<Vec<u64>> {
    let batch = prep.batch;
    check_input(plan, &x, batch)?;
    if prep.session != s.session() {
        return Err(ModelError::Input(
            "a prediction prepared for another session".into(),
        ));
    }
    let mut run = ServerRun {
        s,
        m,
        prepared: prep.steps.into_iter().map(Some).collect(),
    };
    walk(plan, &mut run, x, batch).await
}

/// A server running the gates of [`finish_predict`]'s walk: each step's prepared part if
/// there is one, the whole gate otherwise.
struct ServerRun<'a, T> {
    s: &'a mut Server<T>,
    m: &'a Loaded,
    /// The prepared part of step `i`, until it runs.
    prepared: Vec<Option<PreparedStep>>,
}

impl<T: Transport> Backend for ServerRun<'_, T> {
    fn adds_constants(&self) -> bool {
        self.s.is_p0()
    }

    fn bias(&self, weight: usize) -> Result<Option<&[u64]>> {
        let (_, b) = self
            .m
            .weights
            .dense
            .get(weight)
            .ok_or_else(|| no_weight(weight))?;
        // A shared bias is added by both servers, a public one by P0 only.
        Ok((self.m.weights.private || self.s.is_p0()).then_some(b.as_slice()))
    }

    async fn run(&mut self, step: usize, gate: &Gate, x: &[u64]) -> Result<Vec<u64>> {
        let ready = self.prepared.get_mut(step).and_then(Option::take);
        let (s, m) = (&mut *self.s, self.m);
        match gate {
            Gate::Local => Ok(x.to_vec()),
            Gate::Lift { bits, .. } => match ready {
                Some(PreparedStep::Lift(pl)) => p::finish_lift(s, pl, x).await,
                _ => p::lift(s, x, *bits).await,
            },
            Gate::Product { op, weight } => {
                if m.weights.private {
                    let w = m.private.get(*weight).ok_or_else(|| no_weight(*weight))?;
                    match ready {
                        Some(PreparedStep::Product(pp)) => {
                            p::finish_bilinear_private(s, pp, x, w).await
                        }
                        _ => p::bilinear_private(s, op, x, w).await,
                    }
                } else {
                    let (w, _) = m
                        .weights
                        .dense
                        .get(*weight)
                        .ok_or_else(|| no_weight(*weight))?;
                    p::bilinear_public(op, x, w)
                }
            }
            Gate::MaxPool { shape, bits, mode } => match ready {
                Some(PreparedStep::MaxPool(pm)) => p::finish_maxpool(s, pm, x).await,
                _ => p::maxpool_with(s, x, shape, *bits, *mode).await,
            },
            Gate::AvgPool { shape } => match ready {
                Some(PreparedStep::Truncate(pt)) => p::finish_avgpool(s, pt, x, shape).await,
                _ => p::avgpool(s, x, shape).await,
            },
            Gate::Truncate { f, .. } => match ready {
                Some(PreparedStep::Truncate(pt)) => p::finish_truncate(s, pt, x).await,
                _ => p::truncate(s, x, *f).await,
            },
            Gate::Relu {
                shift, bits, mode, ..
            } => match ready {
                Some(PreparedStep::Relu(pr)) => p::finish_relu(s, *pr, x).await,
                _ => p::relu_with(s, x, *shift, *bits, *mode).await,
            },
            Gate::ReluDense {
                shift,
                bits,
                op,
                weight,
            } => {
                let w = relu_dense_weight(m, *weight)?;
                match ready {
                    Some(PreparedStep::ReluDense(pr)) => p::finish_relu_dense(s, *pr, x, w).await,
                    _ => p::relu_dense(s, x, *shift, *bits, op, w).await,
                }
            }
            Gate::Piecewise { g, bits, .. } => p::piecewise(s, x, g, *bits).await,
        }
        .map_err(core_err)
    }
}

/// The result of [`run_in_process`].
#[derive(Debug)]
pub struct LocalPrediction {
    /// The client's reconstructed output (with `plan.out_frac` fractional bits).
    pub output: Vec<u64>,
    /// Bytes and messages each party sent (P0, P1, helper, client).
    pub sent: [sotto_core::transport::LinkStats; 4],
    /// A streamed run: the most material (bytes of one server's share) the helper had sent
    /// ahead of what the servers had taken; 0 otherwise.
    pub peak_ahead: usize,
}

/// One private prediction with all four parties in this process over the in-memory mesh:
/// the helper uses `helper_plan`, server `i` uses `server_plans[i]` with `weights[i]`, and the
/// client shares `x` (encoded inputs of `batch` examples) and reconstructs the output.
pub fn run_in_process(
    helper_plan: &Plan,
    server_plans: [&Plan; 2],
    weights: &[ServerWeights; 2],
    x: &[u64],
    batch: usize,
) -> Result<LocalPrediction> {
    run_in_process_with(helper_plan, server_plans, weights, x, batch, None)
}

/// [`run_in_process`], streamed when `window` is given: the helper deals alongside the
/// servers, at most about `window` bytes of material (per server) ahead of them, and the
/// servers take each step's material as they run it. The result is the same; what the
/// servers hold of the material at once is bounded by the window plus the largest step's.
pub fn run_in_process_with(
    helper_plan: &Plan,
    server_plans: [&Plan; 2],
    weights: &[ServerWeights; 2],
    x: &[u64],
    batch: usize,
    window: Option<usize>,
) -> Result<LocalPrediction> {
    use sotto_core::local::{run_local_with, LocalTransport};
    use sotto_core::session::{client_receive_output, client_send_input, client_send_input_bits};
    fn m2c(e: ModelError) -> sotto_core::CoreError {
        sotto_core::CoreError::Protocol(e.to_string())
    }
    let private = weights[0].private;
    let out_len = batch * helper_plan.output_len;
    let peak = std::sync::atomic::AtomicUsize::new(0);
    let peak = &peak;
    let helper = |mut d: Dealer<LocalTransport>| async move {
        let h = deal_load(&mut d, helper_plan, private).await.map_err(m2c)?;
        deal_predict(&mut d, helper_plan, &h, batch)
            .await
            .map_err(m2c)?;
        p::deal_output(&mut d, out_len).await?;
        d.drain().await?;
        peak.store(
            d.peak_unacknowledged(),
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(())
    };
    let (server, client) = (
        |mut s: Server<LocalTransport>| async move {
            let i = s.id().index();
            let plan = server_plans[i];
            let m = load(&mut s, plan, weights[i].clone()).await.map_err(m2c)?;
            // As a server does: the input-independent part first, then the input.
            let prep = prepare_predict(&mut s, plan, &m, batch)
                .await
                .map_err(m2c)?;
            let xs = receive_input(&s, plan, batch).await.map_err(m2c)?;
            let y = finish_predict(&mut s, plan, &m, prep, xs)
                .await
                .map_err(m2c)?;
            p::output(&mut s, &y, 64).await
        },
        |t: LocalTransport, session| async move {
            match server_plans[0].input_bits() {
                Some(k) => client_send_input_bits(&t, session, x, k).await?,
                None => client_send_input(&t, session, x).await?,
            }
            client_receive_output(&t, session, out_len, 64).await
        },
    );
    let run = run_local_with(helper, server, client, false, window).map_err(core_err)?;
    Ok(LocalPrediction {
        output: run.client,
        sent: run.sent,
        peak_ahead: peak.load(std::sync::atomic::Ordering::Relaxed),
    })
}
