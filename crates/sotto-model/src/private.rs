//! Running a [`Plan`] with the three-party protocols of `sotto-core`.
//!
//! The helper runs [`deal_load`] once per loaded model and [`deal_predict`] per prediction;
//! each server runs [`load`] and [`predict`] in the same order. In private-weights mode the
//! servers hold additive shares of the weights ([`share_weights`]); in public-weights mode
//! both hold them in the clear and only the input is private.

use sotto_core::linear::Bilinear;
use sotto_core::prg::Prg;
use sotto_core::protocols as p;
use sotto_core::session::{Dealer, Server};
use sotto_core::share;
use sotto_core::transport::Transport;

use crate::error::{ModelError, Result};
use crate::plan::{core_err, Plan, StepKind, Values};

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
    Ok(HelperLoaded { masks })
}

/// Loads a model on a server (private mode: opens `W − B` once per dense layer).
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
    Ok(Loaded { weights, private })
}

fn op(batch: usize, inputs: usize, outputs: usize) -> Bilinear {
    Bilinear::MatMul {
        m: batch,
        k: inputs,
        n: outputs,
    }
}

/// Helper side of [`predict`].
pub async fn deal_predict<T: Transport>(
    d: &mut Dealer<T>,
    plan: &Plan,
    h: &HelperLoaded,
    batch: usize,
) -> Result<()> {
    let f = plan.fp.frac_bits();
    for st in &plan.steps {
        let n = batch * st.per_example;
        match st.kind {
            StepKind::LiftInput { bits } => p::deal_lift(d, n, bits).await,
            StepKind::Dense {
                dense,
                inputs,
                outputs,
            } => {
                if let Some(mask) = h.masks.get(dense) {
                    p::deal_bilinear_private(d, &op(batch, inputs, outputs), mask).await
                } else {
                    Ok(())
                }
            }
            StepKind::Conv { weights, params } => {
                if let Some(mask) = h.masks.get(weights) {
                    p::deal_bilinear_private(d, &params.bilinear(batch), mask).await
                } else {
                    Ok(())
                }
            }
            StepKind::MaxPool { params, bits } => {
                p::deal_maxpool(d, &params.core_shape(batch), bits).await
            }
            StepKind::AvgPool { params } => p::deal_avgpool(d, &params.core_shape(batch)).await,
            StepKind::AvgPoolPadded { .. } => {
                p::deal_truncate(d, n, sotto_core::protocols::AVG_RECIP_BITS).await
            }
            StepKind::Transpose { .. }
            | StepKind::Scale { .. }
            | StepKind::Add { .. }
            | StepKind::Concat { .. }
            | StepKind::Pad { .. } => Ok(()),
            StepKind::Truncate => p::deal_truncate(d, n, f).await,
            StepKind::Relu { shift, bits } => p::deal_relu(d, n, shift, bits).await,
            StepKind::Clip { shift, bits, .. } => p::deal_relu(d, 2 * n, shift, bits).await,
            StepKind::Sigmoid { in_frac } => p::deal_sigmoid(d, n, in_frac, f).await,
            StepKind::Tanh { in_frac } => p::deal_tanh(d, n, in_frac, f).await,
            StepKind::Piecewise { act, in_frac, bits } => {
                let g = act.piecewise(in_frac, f).map_err(core_err)?;
                p::deal_piecewise(d, n, &g, bits).await
            }
        }
        .map_err(core_err)?;
    }
    Ok(())
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
    let ahead = if s.is_streamed() { 0 } else { plan.steps.len() };
    for st in &plan.steps[..ahead] {
        let n = batch * st.per_example;
        let prepared = match st.kind {
            StepKind::LiftInput { bits } => {
                PreparedStep::Lift(p::prepare_lift(s, n, bits).await.map_err(core_err)?)
            }
            StepKind::Dense {
                dense,
                inputs,
                outputs,
            } if m.weights.private => {
                let w = m.private.get(dense).ok_or_else(|| {
                    ModelError::Input(format!("dense layer {dense} has no loaded weight"))
                })?;
                PreparedStep::Product(
                    p::prepare_bilinear_private(s, &op(batch, inputs, outputs), w)
                        .await
                        .map_err(core_err)?,
                )
            }
            StepKind::Conv { weights, params } if m.weights.private => {
                let w = m.private.get(weights).ok_or_else(|| {
                    ModelError::Input(format!("convolution {weights} has no loaded weight"))
                })?;
                PreparedStep::Product(
                    p::prepare_bilinear_private(s, &params.bilinear(batch), w)
                        .await
                        .map_err(core_err)?,
                )
            }
            StepKind::Dense { .. }
            | StepKind::Conv { .. }
            | StepKind::Transpose { .. }
            | StepKind::Scale { .. }
            | StepKind::Add { .. }
            | StepKind::Concat { .. }
            | StepKind::Pad { .. } => PreparedStep::Local,
            StepKind::AvgPoolPadded { .. } => PreparedStep::Truncate(
                p::prepare_truncate(s, n, sotto_core::protocols::AVG_RECIP_BITS)
                    .await
                    .map_err(core_err)?,
            ),
            StepKind::Relu { shift, bits } => PreparedStep::Relu(Box::new(
                p::prepare_relu(s, n, shift, bits).await.map_err(core_err)?,
            )),
            StepKind::Clip { shift, bits, .. } => PreparedStep::Relu(Box::new(
                p::prepare_relu(s, 2 * n, shift, bits)
                    .await
                    .map_err(core_err)?,
            )),
            StepKind::MaxPool { params, bits } => PreparedStep::MaxPool(
                p::prepare_maxpool(s, &params.core_shape(batch), bits)
                    .await
                    .map_err(core_err)?,
            ),
            StepKind::Truncate => PreparedStep::Truncate(
                p::prepare_truncate(s, n, plan.fp.frac_bits())
                    .await
                    .map_err(core_err)?,
            ),
            StepKind::AvgPool { params } => PreparedStep::Truncate(
                p::prepare_avgpool(s, &params.core_shape(batch))
                    .await
                    .map_err(core_err)?,
            ),
            // Not prepared: this step and every later one run online, in order.
            StepKind::Sigmoid { .. } | StepKind::Tanh { .. } | StepKind::Piecewise { .. } => break,
        };
        steps.push(prepared);
    }
    Ok(PreparedPrediction {
        batch,
        session: s.session(),
        steps,
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
    let f = plan.fp.frac_bits();
    let mut prepared = prep.steps.into_iter();
    let mut vals = Values::new(plan, x, batch)?;
    for (i, st) in plan.steps.iter().enumerate() {
        let ready = prepared.next();
        let h = vals.get(st.inputs[0]);
        let y = match st.kind {
            StepKind::LiftInput { bits } => match ready {
                Some(PreparedStep::Lift(pl)) => p::finish_lift(s, pl, h).await,
                _ => p::lift(s, h, bits).await,
            }
            .map_err(core_err)?,
            StepKind::Dense {
                dense,
                inputs,
                outputs,
            } => {
                let o = op(batch, inputs, outputs);
                let (w, b) = &m.weights.dense[dense];
                let mut z = if m.weights.private {
                    match ready {
                        Some(PreparedStep::Product(pp)) => {
                            p::finish_bilinear_private(s, pp, h, &m.private[dense]).await
                        }
                        _ => p::bilinear_private(s, &o, h, &m.private[dense]).await,
                    }
                } else {
                    p::bilinear_public(&o, h, w)
                }
                .map_err(core_err)?;
                p::add_bias(s, &mut z, b, !m.weights.private).map_err(core_err)?;
                z
            }
            StepKind::Conv { weights, params } => {
                let cs = params.core_shape(batch);
                let o = params.bilinear(batch);
                let (w, b) = &m.weights.dense[weights];
                let mut z = if m.weights.private {
                    match ready {
                        Some(PreparedStep::Product(pp)) => {
                            p::finish_bilinear_private(s, pp, h, &m.private[weights]).await
                        }
                        _ => p::bilinear_private(s, &o, h, &m.private[weights]).await,
                    }
                } else {
                    p::bilinear_public(&o, h, w)
                }
                .map_err(core_err)?;
                p::add_channel_bias(s, &mut z, cs.out_h() * cs.out_w(), b, !m.weights.private)
                    .map_err(core_err)?;
                z
            }
            StepKind::MaxPool { params, bits } => match ready {
                Some(PreparedStep::MaxPool(pm)) => p::finish_maxpool(s, pm, h).await,
                _ => p::maxpool(s, h, &params.core_shape(batch), bits).await,
            }
            .map_err(core_err)?,
            StepKind::AvgPool { params } => match ready {
                Some(PreparedStep::Truncate(pt)) => {
                    p::finish_avgpool(s, pt, h, &params.core_shape(batch)).await
                }
                _ => p::avgpool(s, h, &params.core_shape(batch)).await,
            }
            .map_err(core_err)?,
            StepKind::Transpose { dims, rank, perm } => {
                crate::ir::permute(h, batch, &dims[..rank], &perm[..rank + 1])
            }
            StepKind::Truncate => match ready {
                Some(PreparedStep::Truncate(pt)) => p::finish_truncate(s, pt, h).await,
                _ => p::truncate(s, h, f).await,
            }
            .map_err(core_err)?,
            StepKind::Relu { shift, bits } => match ready {
                Some(PreparedStep::Relu(pr)) => p::finish_relu(s, *pr, h).await,
                _ => p::relu(s, h, shift, bits).await,
            }
            .map_err(core_err)?,
            StepKind::Clip {
                shift,
                bits,
                lo,
                hi,
            } => {
                // Both differences through one gate call: one pass of its rounds.
                let p0 = s.is_p0();
                let (a, b) = crate::plan::clip_inputs(h, lo, hi, p0);
                let n = a.len();
                let ab = [a, b].concat();
                let r = match ready {
                    Some(PreparedStep::Relu(pr)) => p::finish_relu(s, *pr, &ab).await,
                    _ => p::relu(s, &ab, shift, bits).await,
                }
                .map_err(core_err)?;
                crate::plan::clip_combine(&r[..n], &r[n..], lo, shift, p0)
            }
            StepKind::Sigmoid { in_frac } => {
                p::sigmoid(s, h, in_frac, f).await.map_err(core_err)?
            }
            StepKind::Tanh { in_frac } => p::tanh(s, h, in_frac, f).await.map_err(core_err)?,
            StepKind::Pad { chw, pads, value } => {
                let fill = if s.is_p0() { value } else { 0 };
                crate::ir::pad_chw(h, batch, chw, pads, fill)
            }
            StepKind::AvgPoolPadded {
                params,
                pads,
                include_pad,
            } => {
                let z = crate::plan::padded_window_sums(h, batch, &params, pads, include_pad)?;
                match ready {
                    Some(PreparedStep::Truncate(pt)) => p::finish_truncate(s, pt, &z).await,
                    _ => p::truncate(s, &z, sotto_core::protocols::AVG_RECIP_BITS).await,
                }
                .map_err(core_err)?
            }
            StepKind::Piecewise { act, in_frac, bits } => {
                let g = act.piecewise(in_frac, f).map_err(core_err)?;
                p::piecewise(s, h, &g, bits).await.map_err(core_err)?
            }
            StepKind::Scale { shift } => crate::plan::scale_up(h, shift),
            StepKind::Add { subtract } => crate::plan::add(h, vals.get(st.inputs[1]), subtract),
            StepKind::Concat { outer } => vals.concat(&st.inputs, outer),
        };
        vals.set(i, y);
    }
    Ok(vals.output())
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
    use sotto_core::session::{client_receive_output, client_send_input};
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
            let xs = s.receive_input(batch * plan.input_len).await?;
            let y = finish_predict(&mut s, plan, &m, prep, xs)
                .await
                .map_err(m2c)?;
            p::output(&mut s, &y, 64).await
        },
        |t: LocalTransport, session| async move {
            client_send_input(&t, session, x).await?;
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
