//! The one interpreter of a [`Plan`]: what each step runs, decided once.
//!
//! [`Step::gate`] lowers a step to the protocol [`Gate`] it runs (which helper material, on
//! how many elements, with which parameters), and the crate-internal lowering behind it adds
//! the local work around the gate (padding, permutations, sums, concatenations, scalings,
//! a clip's input split and recombination, padded window sums, bias additions). With the
//! plan's opt-in [`Plan::fewer_rounds`], the plan-level lowering then fuses each pair of
//! [`Plan::relu_dense_pairs`] into one [`Gate::ReluDense`] at the ReLU's step (the dense
//! step keeps only its bias). Everything
//! else consumes that lowering instead of deciding again:
//!
//! - the cost model ([`Gate::cost`], and [`Step::cost`] and [`Plan::step_costs`] over it);
//! - the helper ([`crate::private::deal_predict`]) and a server's offline phase
//!   ([`crate::private::prepare_predict`]), which walk the gates alone (the material walk);
//! - the walk over values (crate-internal `walk`), which runs the local work and hands each
//!   gate to a backend (a crate-internal `Backend` trait): the plaintext twin
//!   ([`Plan::eval_fixed`]) computes it in the clear, a server
//!   ([`crate::private::finish_predict`]) runs the protocol. The only party-dependent part of
//!   the local work (P0 adds public constants, P1 does not) is the backend's
//!   `adds_constants`.

use std::future::Future;
use std::task::{Context, Poll, Waker};

use sotto_core::dcf_bit;
use sotto_core::linear::{Bilinear, PoolShape};
use sotto_core::plain;
use sotto_core::protocols::{
    fused_sign_bits, max_tree_rounds, shifted_bits, Comparisons, PiecewiseLinear, AVG_RECIP_BITS,
    FULL_BITS,
};
use sotto_core::ring;

use crate::error::{ModelError, Result};
use crate::ir::PoolParams;
use crate::plan::{
    add, clip_combine, clip_inputs, core_err, padded_window_sums, scale_up, Cost, Plan, Step,
    StepKind, Values,
};

/// The protocol gate a step runs, with everything the helper, the servers and the cost model
/// need to agree on: its element counts (batch included) and parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum Gate {
    /// No gate: the step is local (no helper material, no round).
    Local,
    /// The client's range sharing of `bits`-bit input codes (the top bits and a wrap bit
    /// XOR-shared, the rest additive; `sotto_core::share::share_input_bits`) made additive
    /// shares of the values they encode (one opening of the masked XOR-shared bits), on `n`
    /// elements.
    Lift {
        /// Elements.
        n: usize,
        /// Width of the range, sign included.
        bits: u32,
    },
    /// The product `op(x, W)` with weight tensor `weight` of [`Plan::weights`]: a Beaver
    /// product with the once-per-model mask when the weights are private (helper material, one
    /// round), local when they are public.
    Product {
        /// The product.
        op: Bilinear,
        /// Index into [`Plan::weights`].
        weight: usize,
    },
    /// Max pooling by a tree of sign gates comparing on `bits` bits.
    MaxPool {
        /// Geometry (batch included).
        shape: PoolShape,
        /// Comparison width.
        bits: u32,
        /// How the comparisons are made: `Fast` unless the plan's opt-in
        /// [`Plan::compact_comparisons`] is on.
        mode: Comparisons,
    },
    /// Average pooling: window sums times a reciprocal, then one exact truncation by
    /// [`AVG_RECIP_BITS`].
    AvgPool {
        /// Geometry (batch included).
        shape: PoolShape,
    },
    /// Exact truncation of `n` elements by `f` bits.
    Truncate {
        /// Elements.
        n: usize,
        /// Bits removed.
        f: u32,
    },
    /// `ReLU(x) >> shift` of `n` elements, comparing on `bits` bits.
    Relu {
        /// Elements.
        n: usize,
        /// Truncation fused into the ReLU.
        shift: u32,
        /// Comparison width.
        bits: u32,
        /// How the comparison is made ([`relu_mode`]).
        mode: Comparisons,
    },
    /// `(ReLU(x) >> shift)·W`: a truncating ReLU (the fused `Compact` gate of [`Gate::Relu`])
    /// and the private dense product reading its output, in the ReLU's two rounds (the plan's
    /// opt-in [`Plan::fewer_rounds`]; [`Plan::relu_dense_pairs`] says where). The helper deals,
    /// besides the ReLU's material, shares of each of its seven dealt words times the weight
    /// mask's rows, so the product needs no opening. It covers two plan steps: the ReLU's
    /// (whose value is then the product) and the dense layer's (left with its bias).
    ReluDense {
        /// Truncation fused into the ReLU (> 0).
        shift: u32,
        /// Comparison width of the ReLU.
        bits: u32,
        /// The product (a [`Bilinear::MatMul`] whose input is the ReLU's output).
        op: Bilinear,
        /// Index into [`Plan::weights`].
        weight: usize,
    },
    /// A piecewise-linear function of `n` elements (sigmoid and tanh are ones, compared on
    /// [`FULL_BITS`]): one sign gate for all pieces, then an exact truncation. It has no
    /// offline part a server prepares ahead ([`Gate::has_offline_part`]).
    Piecewise {
        /// Elements.
        n: usize,
        /// The function.
        g: PiecewiseLinear,
        /// Comparison width.
        bits: u32,
    },
}

impl Gate {
    /// Makes the gate's comparisons `Compact` where it has a mode ([`Plan::compact_comparisons`]):
    /// a max pool's tree and a ReLU without truncation then compare with one-bit keys (about
    /// 2.4 times smaller, half the evaluation) and take one more round per comparison; a
    /// truncating ReLU's fused gate is `Compact` already. Other gates are left as they are.
    pub fn compact(&mut self) {
        if let Gate::MaxPool { mode, .. } | Gate::Relu { mode, .. } = self {
            *mode = Comparisons::Compact;
        }
    }

    /// Whether a server prepares the gate ahead of the input ([`crate::private::prepare_predict`]
    /// stops at the first gate without such a part, and the rest runs online, in order).
    pub fn has_offline_part(&self) -> bool {
        !matches!(self, Gate::Piecewise { .. })
    }

    /// What the gate costs each server (for the element counts it was lowered with; `private`
    /// is the weights mode): its online rounds and bytes, and the helper material it receives
    /// (DCF keys; P1 also gets dealt values, counted here). The 16 bytes of framing of each
    /// DCF key batch (its length and header) are left out: they do not grow with the batch.
    pub fn cost(&self, private: bool) -> Cost {
        match self {
            Gate::Local => Cost::default(),
            Gate::Lift { n, bits } => {
                // One opening of the masked XOR-shared bits (the code's top bits and a wrap
                // bit) per element; P1 gets the additive shares of the dealt bits (P0's come
                // from its seed).
                let bits = *n as u64 * (u64::from(sotto_core::share::xor_bits(*bits)) + 1);
                Cost {
                    rounds: 1,
                    online_bytes: bits.div_ceil(8),
                    helper_bytes: 8 * bits,
                }
            }
            Gate::Product { op, .. } if private => Cost {
                rounds: 1,
                online_bytes: 8 * op.x_len() as u64,
                helper_bytes: 8 * op.out_len() as u64,
            },
            Gate::Product { .. } => Cost::default(),
            Gate::MaxPool { shape, bits, mode } => {
                let k = shape.kernel_h * shape.kernel_w;
                let cmps = (k.saturating_sub(1) * shape.windows()) as u64;
                match mode {
                    Comparisons::Fast => Cost {
                        rounds: max_tree_rounds(k),
                        online_bytes: 8 * cmps,
                        helper_bytes: cmps * (key_bytes(*bits, 2) + 16),
                    },
                    Comparisons::Compact => {
                        // Each level opens its masked differences, then their packed bits.
                        let mut bits_opened = 0;
                        let mut left = k;
                        while left > 1 {
                            bits_opened += ((left / 2) * shape.windows()).div_ceil(8) as u64;
                            left = left.div_ceil(2);
                        }
                        Cost {
                            rounds: 2 * max_tree_rounds(k),
                            online_bytes: 8 * cmps + bits_opened,
                            helper_bytes: cmps
                                * (dcf_bit::key_bytes(bits.saturating_sub(1)) as u64 + 16),
                        }
                    }
                }
            }
            Gate::AvgPool { shape } => truncate_cost(shape.windows() as u64, AVG_RECIP_BITS),
            Gate::Truncate { n, f } => truncate_cost(*n as u64, *f),
            Gate::Relu {
                n,
                shift,
                bits,
                mode: Comparisons::Compact,
            } => {
                let n = *n as u64;
                // One opening of the masked input, then the packed sign bits (and carries).
                let (opened, keys, dealt) = if *shift > 0 {
                    let keys = dcf_bit::key_bytes(fused_sign_bits(*bits, *shift) - 1)
                        + dcf_bit::key_bytes(*shift);
                    (2 * n, keys as u64, 56)
                } else {
                    (n, dcf_bit::key_bytes(shifted_bits(*bits, 0) - 1) as u64, 16)
                };
                Cost {
                    rounds: 2,
                    online_bytes: 8 * n + opened.div_ceil(8),
                    helper_bytes: n * (keys + dealt),
                }
            }
            Gate::Relu { n, shift, bits, .. } => {
                let n = *n as u64;
                let sign = Cost {
                    rounds: 1,
                    online_bytes: 8 * n,
                    helper_bytes: n * (key_bytes(shifted_bits(*bits, *shift), 2) + 16),
                };
                if *shift > 0 {
                    sign.plus(truncate_cost(n, *shift))
                } else {
                    sign
                }
            }
            Gate::ReluDense {
                shift, bits, op, ..
            } => {
                let relu = Gate::Relu {
                    n: op.x_len(),
                    shift: *shift,
                    bits: *bits,
                    mode: Comparisons::Compact,
                }
                .cost(private);
                // Each of the ReLU's seven dealt words times the mask's row, per input element.
                let products = match op {
                    Bilinear::MatMul { m, k, n } if private => 56 * (m * k * n) as u64,
                    _ => 0,
                };
                Cost {
                    helper_bytes: relu.helper_bytes + products,
                    ..relu
                }
            }
            Gate::Piecewise { n, g, bits } => {
                let pieces = g.pieces() as u64 * *n as u64;
                Cost {
                    rounds: 1,
                    online_bytes: 8 * pieces,
                    helper_bytes: pieces * (key_bytes(*bits, 2) + 16),
                }
                .plus(truncate_cost(*n as u64, g.shift()))
            }
        }
    }
}

/// How a ReLU's comparison is made: one fused `Compact` gate when it truncates (the same two
/// rounds as a truncation followed by a `Fast` sign gate, one-bit keys: about 40 % less
/// helper material and less online traffic), `Fast` otherwise (one round instead of two).
pub fn relu_mode(shift: u32) -> Comparisons {
    if shift > 0 {
        Comparisons::Compact
    } else {
        Comparisons::Fast
    }
}

/// Bytes of one comparison key on `bits − 1` bits with `m` payload elements (sign tests use
/// sotto-core's packed DCF format).
fn key_bytes(bits: u32, m: u64) -> u64 {
    sotto_core::dcf::Format::Packed.key_bytes(bits.saturating_sub(1), m as usize) as u64
}

/// Exact truncation by `f` of `n` elements: one opening; P1 gets `msb(r)` and `r >> f`, both
/// get an `f`-bit carry key.
fn truncate_cost(n: u64, f: u32) -> Cost {
    let key = if f == 0 {
        0
    } else {
        16 + u64::from(f) * 25 + 8
    };
    Cost {
        rounds: 1,
        online_bytes: 8 * n,
        helper_bytes: n * (16 + key),
    }
}

impl Cost {
    fn plus(self, o: Cost) -> Cost {
        Cost {
            rounds: self.rounds + o.rounds,
            online_bytes: self.online_bytes + o.online_bytes,
            helper_bytes: self.helper_bytes + o.helper_bytes,
        }
    }
}

/// Local work on a step's inputs before its gate (or all of a local step's work).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Pre {
    /// Nothing: the gate reads the step's (first) input.
    Input,
    /// Axis permutation of the per-example `dims`.
    Transpose {
        dims: [usize; 8],
        rank: usize,
        perm: [usize; 9],
    },
    /// Padding with a public constant (P0 writes it, P1 zeros).
    Pad {
        chw: [usize; 3],
        pads: [usize; 4],
        value: u64,
    },
    /// Multiplication by `2^shift`.
    Scale { shift: u32 },
    /// Sum or difference of the two inputs.
    Add { subtract: bool },
    /// Concatenation of the inputs in `outer` chunks per example.
    Concat { outer: usize },
    /// A clip's two differences `x − lo` and `x − hi`, one after the other (the constants
    /// subtracted by P0 only), for one ReLU gate on both.
    ClipSplit { lo: u64, hi: u64 },
    /// The window sums of the input padded with zeros, times each window's reciprocal.
    WindowSums {
        params: PoolParams,
        pads: [usize; 4],
        include_pad: bool,
    },
}

/// Local work on a gate's output.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Post {
    /// Nothing: the gate's output is the step's.
    Output,
    /// Weight tensor `weight`'s bias added to every row.
    RowBias { weight: usize },
    /// Weight tensor `weight`'s bias added per channel plane of `plane` elements.
    ChannelBias { weight: usize, plane: usize },
    /// A clip's recombination `ReLU(x − lo) − ReLU(x − hi) + (lo >> shift)` (the constant
    /// added by P0 only).
    ClipJoin { lo: u64, shift: u32 },
}

/// A step lowered: local work, its gate, local work.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Lowered {
    pub(crate) pre: Pre,
    pub(crate) gate: Gate,
    pub(crate) post: Post,
}

impl Step {
    /// The protocol gate the step runs for `batch` examples, values between layers having
    /// `frac_bits` fractional bits (the plan's `f`): the one place that decides which gate,
    /// on how many elements, with which parameters.
    pub fn gate(&self, batch: usize, frac_bits: u32) -> Result<Gate> {
        Ok(self.lower(batch, frac_bits)?.gate)
    }

    /// The step's gate with the local work around it.
    pub(crate) fn lower(&self, batch: usize, f: u32) -> Result<Lowered> {
        let n = batch.checked_mul(self.per_example).ok_or_else(|| {
            ModelError::Input(format!(
                "a batch of {batch} inputs is too large for step {:?}",
                self.node
            ))
        })?;
        let gate = |gate: Gate| Lowered {
            pre: Pre::Input,
            gate,
            post: Post::Output,
        };
        let local = |pre: Pre| Lowered {
            pre,
            gate: Gate::Local,
            post: Post::Output,
        };
        Ok(match self.kind {
            StepKind::LiftInput { bits } => gate(Gate::Lift { n, bits }),
            StepKind::Dense {
                dense,
                inputs,
                outputs,
            } => Lowered {
                pre: Pre::Input,
                gate: Gate::Product {
                    op: Bilinear::MatMul {
                        m: batch,
                        k: inputs,
                        n: outputs,
                    },
                    weight: dense,
                },
                post: Post::RowBias { weight: dense },
            },
            StepKind::Conv { weights, params } => {
                let cs = params.core_shape(batch);
                Lowered {
                    pre: Pre::Input,
                    gate: Gate::Product {
                        op: params.bilinear(batch),
                        weight: weights,
                    },
                    post: Post::ChannelBias {
                        weight: weights,
                        plane: cs.out_h() * cs.out_w(),
                    },
                }
            }
            StepKind::MaxPool { params, bits } => gate(Gate::MaxPool {
                shape: params.core_shape(batch),
                bits,
                mode: Comparisons::Fast,
            }),
            StepKind::AvgPool { params } => gate(Gate::AvgPool {
                shape: params.core_shape(batch),
            }),
            StepKind::AvgPoolPadded {
                params,
                pads,
                include_pad,
            } => Lowered {
                pre: Pre::WindowSums {
                    params,
                    pads,
                    include_pad,
                },
                gate: Gate::Truncate {
                    n,
                    f: AVG_RECIP_BITS,
                },
                post: Post::Output,
            },
            StepKind::Truncate => gate(Gate::Truncate { n, f }),
            StepKind::Relu { shift, bits } => gate(Gate::Relu {
                n,
                shift,
                bits,
                mode: relu_mode(shift),
            }),
            StepKind::Clip {
                shift,
                bits,
                lo,
                hi,
            } => Lowered {
                // Both differences through one gate call: one pass of its rounds.
                pre: Pre::ClipSplit { lo, hi },
                gate: Gate::Relu {
                    n: 2 * n,
                    shift,
                    bits,
                    mode: relu_mode(shift),
                },
                post: Post::ClipJoin { lo, shift },
            },
            StepKind::Sigmoid { in_frac } => gate(Gate::Piecewise {
                n,
                g: PiecewiseLinear::sigmoid(in_frac, f).map_err(core_err)?,
                bits: FULL_BITS,
            }),
            StepKind::Tanh { in_frac } => gate(Gate::Piecewise {
                n,
                g: PiecewiseLinear::tanh(in_frac, f).map_err(core_err)?,
                bits: FULL_BITS,
            }),
            StepKind::Piecewise { act, in_frac, bits } => gate(Gate::Piecewise {
                n,
                g: act.piecewise(in_frac, f).map_err(core_err)?,
                bits,
            }),
            StepKind::Transpose { dims, rank, perm } => local(Pre::Transpose { dims, rank, perm }),
            StepKind::Pad { chw, pads, value } => local(Pre::Pad { chw, pads, value }),
            StepKind::Scale { shift } => local(Pre::Scale { shift }),
            StepKind::Add { subtract } => local(Pre::Add { subtract }),
            StepKind::Concat { outer } => local(Pre::Concat { outer }),
        })
    }

    /// The step's cost for one example; `private` is the weights mode. The gate's
    /// [`Gate::cost`] for a batch of one (lowered with the step's own output fractional bits,
    /// which are `f` wherever the gate depends on it); a step that does not lower (a plan
    /// that [`Plan::validate`] refuses) costs nothing. `input_len` is not needed any more
    /// (the gate knows its shapes) and kept for callers. This is the step on its own: where
    /// [`Plan::fewer_rounds`] fuses it with another, [`Plan::step_costs`] has what runs.
    pub fn cost(&self, input_len: usize, private: bool) -> Cost {
        let _ = input_len;
        self.gate(1, self.out_frac)
            .map_or_else(|_| Cost::default(), |g| g.cost(private))
    }
}

impl Plan {
    /// The (ReLU step, dense step) pairs that run as one [`Gate::ReluDense`]: none unless
    /// [`Plan::fewer_rounds`] is on; with it, each truncating ReLU (shift > 0, so the fused
    /// `Compact` gate of [`relu_mode`]) whose output is read by one step only, a dense layer
    /// reading nothing else.
    pub fn relu_dense_pairs(&self) -> Vec<(usize, usize)> {
        if !self.fewer_rounds {
            return Vec::new();
        }
        // readers[v]: the steps reading value v (0 the input, i + 1 step i's output).
        let mut readers = vec![Vec::new(); self.steps.len() + 1];
        for (j, st) in self.steps.iter().enumerate() {
            for v in &st.inputs {
                if let Some(r) = readers.get_mut(*v) {
                    r.push(j);
                }
            }
        }
        let mut pairs = Vec::new();
        for (i, st) in self.steps.iter().enumerate() {
            let StepKind::Relu { shift, .. } = st.kind else {
                continue;
            };
            if shift == 0 || relu_mode(shift) != Comparisons::Compact {
                continue;
            }
            let [j] = readers[i + 1][..] else {
                continue;
            };
            let next = &self.steps[j];
            let dense_of_it =
                matches!(next.kind, StepKind::Dense { inputs, .. } if inputs == st.per_example);
            if dense_of_it && next.inputs == [i + 1] {
                pairs.push((i, j));
            }
        }
        pairs
    }

    /// Every step lowered for `batch` examples, the pairs of [`Plan::relu_dense_pairs`] fused:
    /// the ReLU step runs the [`Gate::ReluDense`], the dense step only adds its bias.
    pub(crate) fn lowered(&self, batch: usize) -> Result<Vec<Lowered>> {
        let f = self.fp.frac_bits();
        let mut low = self
            .steps
            .iter()
            .map(|st| st.lower(batch, f))
            .collect::<Result<Vec<_>>>()?;
        if self.compact_comparisons {
            low.iter_mut().for_each(|l| l.gate.compact());
        }
        fuse(&mut low, &self.relu_dense_pairs(), |l| &mut l.gate)?;
        Ok(low)
    }

    /// The gates of the plan's steps for `batch` examples, in the order the helper deals them
    /// and the servers run them (a fused dense step's gate is [`Gate::Local`]).
    pub(crate) fn gates(&self, batch: usize) -> Result<Vec<Gate>> {
        Ok(self.lowered(batch)?.into_iter().map(|l| l.gate).collect())
    }

    /// What each step costs per example and server (batch 1; `private` is the weights mode):
    /// [`Step::cost`], except for the pairs of [`Plan::relu_dense_pairs`], whose ReLU step
    /// carries the whole [`Gate::ReluDense`] and whose dense step costs nothing. What `sotto
    /// inspect` prints, admission control weighs requests by, and the rounds `sotto bench`
    /// reports.
    pub fn step_costs(&self, private: bool) -> Vec<Cost> {
        let f = self.fp.frac_bits();
        let mut gates: Vec<Gate> = self
            .steps
            .iter()
            .map(|st| st.gate(1, f).unwrap_or(Gate::Local))
            .collect();
        if self.compact_comparisons {
            gates.iter_mut().for_each(Gate::compact);
        }
        if private && fuse(&mut gates, &self.relu_dense_pairs(), |g| g).is_err() {
            // (not reached: the pairs are ReLU and dense steps)
            return self.steps.iter().map(|_| Cost::default()).collect();
        }
        gates.iter().map(|g| g.cost(private)).collect()
    }
}

/// Replaces the gates of each (ReLU, dense) pair in `items` by one [`Gate::ReluDense`] at the
/// ReLU and [`Gate::Local`] at the dense step.
fn fuse<I>(
    items: &mut [I],
    pairs: &[(usize, usize)],
    gate: impl Fn(&mut I) -> &mut Gate,
) -> Result<()> {
    for &(i, j) in pairs {
        let relu = gate(&mut items[i]).clone();
        let dense = std::mem::replace(gate(&mut items[j]), Gate::Local);
        match (relu, dense) {
            (Gate::Relu { shift, bits, .. }, Gate::Product { op, weight }) => {
                *gate(&mut items[i]) = Gate::ReluDense {
                    shift,
                    bits,
                    op,
                    weight,
                };
            }
            (a, b) => {
                return Err(ModelError::Graph(format!(
                    "steps {i} and {j} lower to {a:?} and {b:?}, not a ReLU and a product"
                )))
            }
        }
    }
    Ok(())
}

/// Who runs the gates of a [`walk`]: the plaintext twin or a server.
pub(crate) trait Backend {
    /// Whether this party adds public constants: P0, and the plaintext twin (which holds
    /// whole values); not P1.
    fn adds_constants(&self) -> bool;

    /// The bias of weight tensor `weight` as this party adds it; `None` when it adds none (P1
    /// with public weights).
    fn bias(&self, weight: usize) -> Result<Option<&[u64]>>;

    /// Runs step `step`'s gate (never [`Gate::Local`]) on `x`.
    async fn run(&mut self, step: usize, gate: &Gate, x: &[u64]) -> Result<Vec<u64>>;
}

/// Runs `plan` on `x` (the input of `batch` examples, whole or a share) with `backend`
/// running the gates: the one walk over the plan's values, each dropped after its last
/// reader. Returns the output (or this party's share of it).
pub(crate) async fn walk<B: Backend>(
    plan: &Plan,
    backend: &mut B,
    x: Vec<u64>,
    batch: usize,
) -> Result<Vec<u64>> {
    let p0 = backend.adds_constants();
    let mut vals = Values::new(plan, x, batch)?;
    for ((i, st), low) in plan.steps.iter().enumerate().zip(plan.lowered(batch)?) {
        let Lowered { pre, gate, post } = low;
        let before = pre_local(&pre, &vals, &st.inputs, batch, p0)?;
        let mid = match (&gate, before) {
            (Gate::Local, Some(v)) => v,
            (Gate::Local, None) => vals.get(st.inputs[0]).to_vec(),
            (g, Some(v)) => backend.run(i, g, &v).await?,
            (g, None) => backend.run(i, g, vals.get(st.inputs[0])).await?,
        };
        let y = post_local(&post, mid, &*backend, p0)?;
        vals.set(i, y);
    }
    Ok(vals.output())
}

/// [`Pre`] on the step's inputs `ids`; `None` for [`Pre::Input`] (the gate reads the first
/// input where it is).
fn pre_local(
    pre: &Pre,
    vals: &Values,
    ids: &[usize],
    batch: usize,
    p0: bool,
) -> Result<Option<Vec<u64>>> {
    let h = vals.get(ids[0]);
    Ok(Some(match *pre {
        Pre::Input => return Ok(None),
        Pre::Transpose { dims, rank, perm } => {
            crate::ir::permute(h, batch, &dims[..rank], &perm[..rank + 1])
        }
        Pre::Pad { chw, pads, value } => {
            crate::ir::pad_chw(h, batch, chw, pads, if p0 { value } else { 0 })
        }
        Pre::Scale { shift } => scale_up(h, shift),
        Pre::Add { subtract } => {
            let other = ids.get(1).ok_or_else(|| {
                ModelError::Graph("a sum of one value (the plan is malformed)".into())
            })?;
            add(h, vals.get(*other), subtract)
        }
        Pre::Concat { outer } => vals.concat(ids, outer),
        Pre::ClipSplit { lo, hi } => {
            let (a, b) = clip_inputs(h, lo, hi, p0);
            [a, b].concat()
        }
        Pre::WindowSums {
            params,
            pads,
            include_pad,
        } => padded_window_sums(h, batch, &params, pads, include_pad)?,
    }))
}

/// [`Post`] on the gate's output `y`.
fn post_local<B: Backend>(post: &Post, mut y: Vec<u64>, backend: &B, p0: bool) -> Result<Vec<u64>> {
    match *post {
        Post::Output => {}
        Post::RowBias { weight } => {
            if let Some(b) = backend.bias(weight)? {
                add_row_bias(&mut y, b)?;
            }
        }
        Post::ChannelBias { weight, plane } => {
            if let Some(b) = backend.bias(weight)? {
                add_channel_bias(&mut y, plane, b)?;
            }
        }
        Post::ClipJoin { lo, shift } => {
            let n = y.len() / 2;
            y = clip_combine(&y[..n], &y[n..], lo, shift, p0);
        }
    }
    Ok(y)
}

/// Adds `bias` to every row of `x` (rows of `bias.len()` elements).
fn add_row_bias(x: &mut [u64], bias: &[u64]) -> Result<()> {
    if bias.is_empty() || !x.len().is_multiple_of(bias.len()) {
        return Err(ModelError::Graph(format!(
            "bias of {} elements does not divide {} outputs",
            bias.len(),
            x.len()
        )));
    }
    for row in x.chunks_mut(bias.len()) {
        ring::add_assign(row, bias).map_err(core_err)?;
    }
    Ok(())
}

/// Adds `bias[c]` to every element of channel `c` of an NCHW tensor (`plane` is `H · W`).
fn add_channel_bias(x: &mut [u64], plane: usize, bias: &[u64]) -> Result<()> {
    let channels = bias.len();
    if channels == 0 || plane == 0 || !x.len().is_multiple_of(channels * plane) {
        return Err(ModelError::Graph(format!(
            "channel bias of {channels} elements with planes of {plane} for {} outputs",
            x.len()
        )));
    }
    for (i, chunk) in x.chunks_mut(plane).enumerate() {
        ring::add_scalar_assign(chunk, bias[i % channels]);
    }
    Ok(())
}

/// The plaintext twin: every gate computed in the clear on whole values.
struct Twin<'a> {
    weights: &'a [(Vec<u64>, Vec<u64>)],
}

impl Twin<'_> {
    fn weight(&self, w: usize) -> Result<&(Vec<u64>, Vec<u64>)> {
        self.weights.get(w).ok_or_else(|| {
            ModelError::Graph(format!(
                "weight tensor {w} of {} (the plan is malformed)",
                self.weights.len()
            ))
        })
    }
}

impl Backend for Twin<'_> {
    fn adds_constants(&self) -> bool {
        true
    }

    fn bias(&self, weight: usize) -> Result<Option<&[u64]>> {
        Ok(Some(&self.weight(weight)?.1))
    }

    async fn run(&mut self, _step: usize, gate: &Gate, x: &[u64]) -> Result<Vec<u64>> {
        Ok(match gate {
            Gate::Local => x.to_vec(),
            Gate::Lift { bits, .. } => plain::lift(x, *bits),
            Gate::Product { op, weight } => {
                plain::bilinear(op, x, &self.weight(*weight)?.0).map_err(core_err)?
            }
            Gate::MaxPool { shape, .. } => plain::maxpool(x, shape).map_err(core_err)?,
            Gate::AvgPool { shape } => plain::avgpool(x, shape).map_err(core_err)?,
            Gate::Truncate { f, .. } => plain::truncate(x, *f),
            Gate::Relu { shift, .. } => plain::relu(x, *shift),
            Gate::ReluDense {
                shift, op, weight, ..
            } => plain::bilinear(op, &plain::relu(x, *shift), &self.weight(*weight)?.0)
                .map_err(core_err)?,
            Gate::Piecewise { g, .. } => plain::piecewise(x, g),
        })
    }
}

/// Polls a future that never waits (the twin's walk) to its end.
fn run_ready<T>(fut: impl Future<Output = Result<T>>) -> Result<T> {
    let mut fut = std::pin::pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(r) => r,
        Poll::Pending => Err(ModelError::Graph(
            "the plaintext twin waited (a gate of the twin is not local)".into(),
        )),
    }
}

impl Plan {
    /// Runs the plan in the clear on fixed-point inputs: the plaintext twin of the private
    /// prediction, which equals it bit for bit (every truncation is exact in both).
    pub fn eval_fixed(&self, x: &[u64], batch: usize) -> Result<Vec<u64>> {
        if Some(x.len()) != batch.checked_mul(self.input_len) {
            return Err(ModelError::Input(format!(
                "{} values for {batch} inputs of {} elements",
                x.len(),
                self.input_len
            )));
        }
        let mut twin = Twin {
            weights: &self.weights,
        };
        run_ready(walk(self, &mut twin, x.to_vec(), batch))
    }
}
