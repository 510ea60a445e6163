//! Graph passes: fold constant scales and shifts (BatchNormalization, Rescaling,
//! Normalization, bias additions) into the linear layers next to them, fold zero padding into
//! the convolution or pooling that reads it, and remove layout changes that move no data.
//!
//! Every pass keeps the function the graph computes (up to `f32` rounding of the folded
//! weights); each sweep rewrites node pairs that do not overlap and the sweeps repeat to a
//! fixed point.

use std::collections::HashMap;

use ndarray::{ArrayD, Axis, IxDyn};

use super::{broadcast_shape, elements, Graph, Op, ValueId};
use crate::error::Result;

/// Most sweeps of [`Graph::optimize`] (each removes at least one node while it changes
/// anything; chains of merges halve per sweep).
const MAX_SWEEPS: usize = 256;

impl Graph {
    /// Simplifies the graph without changing its function:
    /// - consecutive `Affine`s merge;
    /// - an `Affine` folds into the `Dense` or `Conv` that writes its input when nothing else
    ///   reads that value (into a `Conv` only when it is constant per output channel);
    /// - an `Affine` folds into the next `Dense` (through `Reshape`s and `Transpose`s) or
    ///   `Conv` (constant per input channel; a shift only when the conv has no padding, since
    ///   padded zeros are not shifted);
    /// - a zero `Pad` folds into the `Conv` that reads it (and into a `MaxPool` reading a
    ///   non-negative value, or an `AveragePool` that counts padding);
    /// - consecutive `Relu`s and `Clip`s (Keras' `ReLU(max_value=4)` is Relu, Min, Max)
    ///   merge into one, `Clip(0, ∞)` becomes a `Relu`, `Clip(−∞, ∞)` goes;
    /// - identity `Affine`s, `Reshape`s and `Transpose`s go, consecutive `Reshape`s and
    ///   consecutive `Transpose`s merge;
    /// - a product of a value and an elementwise function of it that computes swish, gelu
    ///   (either form) or hard_swish becomes that activation (`Op::Act`), as do its
    ///   elementwise nodes once nothing else reads them;
    /// - nodes the output does not depend on go.
    pub fn optimize(&mut self) -> Result<()> {
        self.validate()?;
        for _ in 0..MAX_SWEEPS {
            let mut changed = self.remove_dead();
            changed |= self.simplify_layout();
            changed |= self.merge_affines();
            changed |= self.merge_clips();
            changed |= self.fold_affine_backward();
            changed |= self.fold_affine_forward();
            changed |= self.fold_pads();
            changed |= self.fuse_activations();
            if !changed {
                break;
            }
            // Each rewrite keeps the graph well formed; checked so that a mistake is an
            // error, never an out-of-range index in the next sweep.
            self.validate()?;
        }
        self.compact();
        self.validate()
    }

    fn remove_dead(&mut self) -> bool {
        let mut live = vec![false; self.values.len()];
        live[self.output] = true;
        let mut removed = vec![false; self.nodes.len()];
        for (i, n) in self.nodes.iter().enumerate().rev() {
            if live[n.output] {
                for &v in &n.inputs {
                    live[v] = true;
                }
            } else {
                removed[i] = true;
            }
        }
        let any = removed.iter().any(|r| *r);
        if any {
            self.apply(&removed, &HashMap::new());
        }
        any
    }

    /// Removes identity reshapes and transposes, merges consecutive reshapes and consecutive
    /// transposes.
    fn simplify_layout(&mut self) -> bool {
        let u = Uses::of(self);
        let mut ed = Edit::new(self);
        for i in 0..self.nodes.len() {
            if ed.busy[i] {
                continue;
            }
            let n = &self.nodes[i];
            let x = n.inputs.first().copied().unwrap_or(0);
            let in_shape = &self.values[x].shape;
            match &n.op {
                Op::Reshape if *in_shape == self.values[n.output].shape => {
                    ed.drop_node(i, n.output, x);
                    continue;
                }
                Op::Transpose { perm } if perm.iter().enumerate().all(|(a, p)| a == *p) => {
                    ed.drop_node(i, n.output, x);
                    continue;
                }
                _ => {}
            }
            // Merge with the producer of the input when this node is its only reader.
            let Some(p) = u.producer[x] else { continue };
            if ed.busy[p] || u.sole_reader(self, x) != Some(i) {
                continue;
            }
            let merged = match (&self.nodes[p].op, &self.nodes[i].op) {
                (Op::Reshape, Op::Reshape) => Op::Reshape,
                (Op::Transpose { perm: p1 }, Op::Transpose { perm: p2 }) => Op::Transpose {
                    perm: p2.iter().map(|&a| p1[a]).collect(),
                },
                _ => continue,
            };
            self.nodes[p].op = merged;
            self.nodes[p].output = self.nodes[i].output;
            ed.remove(i);
            ed.busy[p] = true;
        }
        self.finish(ed)
    }

    /// Merges `Affine → Affine` and removes identity `Affine`s.
    fn merge_affines(&mut self) -> bool {
        let u = Uses::of(self);
        let mut ed = Edit::new(self);
        for i in 0..self.nodes.len() {
            if ed.busy[i] {
                continue;
            }
            let n = &self.nodes[i];
            let Op::Affine { scale, shift } = &n.op else {
                continue;
            };
            if scale.iter().all(|v| *v == 1.0) && shift.iter().all(|v| *v == 0.0) {
                ed.drop_node(i, n.output, n.inputs[0]);
                continue;
            }
            let Some(j) = u.sole_reader(self, n.output) else {
                continue;
            };
            let Op::Affine {
                scale: s2,
                shift: t2,
            } = &self.nodes[j].op
            else {
                continue;
            };
            if ed.busy[j] {
                continue;
            }
            let shape = [scale, shift, s2, t2]
                .iter()
                .try_fold(Vec::new(), |acc, a| broadcast_shape(&acc, a.shape()));
            let Some(shape) = shape else { continue };
            let dim = IxDyn(&shape);
            let (Some(s1), Some(t1), Some(s2), Some(t2)) = (
                scale.broadcast(dim.clone()),
                shift.broadcast(dim.clone()),
                s2.broadcast(dim.clone()),
                t2.broadcast(dim),
            ) else {
                continue;
            };
            let s = ndarray::Zip::from(&s1)
                .and(&s2)
                .map_collect(|a, b| (f64::from(*a) * f64::from(*b)) as f32);
            let t = ndarray::Zip::from(&t1)
                .and(&s2)
                .and(&t2)
                .map_collect(|t, s, t2| (f64::from(*t) * f64::from(*s) + f64::from(*t2)) as f32);
            self.nodes[i].op = Op::Affine { scale: s, shift: t };
            self.nodes[i].output = self.nodes[j].output;
            ed.busy[i] = true;
            ed.remove(j);
        }
        self.finish(ed)
    }

    /// Merges `Relu/Clip → Relu/Clip` (overlapping intervals) and canonicalizes clips.
    fn merge_clips(&mut self) -> bool {
        fn interval(op: &Op) -> Option<(f32, f32)> {
            match op {
                Op::Relu => Some((0.0, f32::INFINITY)),
                Op::Clip { min, max } => Some((*min, *max)),
                _ => None,
            }
        }
        fn clip(min: f32, max: f32) -> Op {
            if min == 0.0 && max == f32::INFINITY {
                Op::Relu
            } else {
                Op::Clip { min, max }
            }
        }
        let u = Uses::of(self);
        let mut ed = Edit::new(self);
        for i in 0..self.nodes.len() {
            if ed.busy[i] {
                continue;
            }
            let n = &self.nodes[i];
            let Some((a1, b1)) = interval(&n.op) else {
                continue;
            };
            if a1 == f32::NEG_INFINITY && b1 == f32::INFINITY {
                ed.drop_node(i, n.output, n.inputs[0]);
                continue;
            }
            let canonical = clip(a1, b1);
            let mut changed = canonical != n.op;
            self.nodes[i].op = canonical;
            if let Some(j) = u.sole_reader(self, self.nodes[i].output) {
                if let (false, Some((a2, b2))) = (ed.busy[j], interval(&self.nodes[j].op)) {
                    if a1 <= b2 && a2 <= b1 {
                        self.nodes[i].op = clip(a1.max(a2), b1.min(b2));
                        self.nodes[i].output = self.nodes[j].output;
                        ed.remove(j);
                        changed = true;
                    }
                }
            }
            if changed {
                ed.busy[i] = true;
                ed.rewritten = true;
            }
        }
        self.finish(ed)
    }

    /// `Dense/Conv → Affine` into the Dense/Conv.
    fn fold_affine_backward(&mut self) -> bool {
        let u = Uses::of(self);
        let mut ed = Edit::new(self);
        for j in 0..self.nodes.len() {
            let n = &self.nodes[j];
            let Op::Affine { scale, shift } = &n.op else {
                continue;
            };
            let v = n.inputs[0];
            let Some(p) = u.producer[v] else { continue };
            if ed.busy[j] || ed.busy[p] || u.sole_reader(self, v) != Some(j) {
                continue;
            }
            let shape = &self.values[v].shape;
            let (Some(s), Some(t)) = (per_channel(scale, shape), per_channel(shift, shape)) else {
                continue;
            };
            let dense = match &self.nodes[p].op {
                Op::Dense { .. } => true,
                Op::Conv { .. } => false,
                _ => continue,
            };
            let (Op::Dense { weights, bias, .. } | Op::Conv { weights, bias, .. }) =
                &mut self.nodes[p].op
            else {
                continue;
            };
            let o = bias.len();
            if s.len() != o || o == 0 {
                continue;
            }
            let per = weights.len() / o;
            for (k, w) in weights.iter_mut().enumerate() {
                let ch = if dense { k % o } else { k / per.max(1) };
                *w = (f64::from(*w) * s[ch]) as f32;
            }
            for ((b, s), t) in bias.iter_mut().zip(&s).zip(&t) {
                *b = (f64::from(*b) * s + t) as f32;
            }
            self.nodes[p].output = self.nodes[j].output;
            ed.busy[p] = true;
            ed.remove(j);
        }
        self.finish(ed)
    }

    /// `Affine → [Reshape | Transpose]* → Dense/Conv` into the Dense/Conv.
    fn fold_affine_forward(&mut self) -> bool {
        let u = Uses::of(self);
        let mut ed = Edit::new(self);
        for i in 0..self.nodes.len() {
            if ed.busy[i] {
                continue;
            }
            let n = &self.nodes[i];
            let Op::Affine { scale, shift } = &n.op else {
                continue;
            };
            let (x, v) = (n.inputs[0], n.output);
            let mut chain = Vec::new();
            let mut cur = v;
            let target = loop {
                let Some(r) = u.sole_reader(self, cur) else {
                    break None;
                };
                if ed.busy[r] || self.nodes[r].inputs.first() != Some(&cur) {
                    break None;
                }
                match self.nodes[r].op {
                    Op::Reshape | Op::Transpose { .. } => {
                        chain.push(r);
                        cur = self.nodes[r].output;
                    }
                    Op::Dense { .. } | Op::Conv { .. } => break Some(r),
                    _ => break None,
                }
            };
            let Some(target) = target else { continue };
            let (Some(s), Some(t)) = (
                self.through(scale, v, &chain),
                self.through(shift, v, &chain),
            ) else {
                continue;
            };
            let in_shape = self.values[cur].shape.clone();
            if !fold_into_next(&mut self.nodes[target].op, &s, &t, &in_shape) {
                continue;
            }
            let first = chain.first().copied().unwrap_or(target);
            self.nodes[first].inputs[0] = x;
            ed.remove(i);
            ed.busy[target] = true;
            for c in chain {
                ed.busy[c] = true;
            }
        }
        self.finish(ed)
    }

    /// `Pad(0) → Conv`, `Pad(0) → MaxPool` on a non-negative value, `Pad(0) → AveragePool`
    /// counting padding, into the Conv or pooling.
    fn fold_pads(&mut self) -> bool {
        let u = Uses::of(self);
        let mut ed = Edit::new(self);
        for i in 0..self.nodes.len() {
            let n = &self.nodes[i];
            let Op::Pad { pads, value } = &n.op else {
                continue;
            };
            let x = n.inputs[0];
            let Some(j) = u.sole_reader(self, n.output) else {
                continue;
            };
            if ed.busy[i] || ed.busy[j] || *value != 0.0 {
                continue;
            }
            let [[0, 0], [t, b], [l, r]] = pads[..] else {
                continue;
            };
            let nonneg = u.producer[x].is_some_and(|p| match &self.nodes[p].op {
                Op::Relu | Op::Sigmoid | Op::HardSigmoid { .. } => true,
                Op::Clip { min, .. } => *min >= 0.0,
                _ => false,
            });
            let Ok([c, h, w]) = <[usize; 3]>::try_from(&self.values[x].shape[..]) else {
                continue;
            };
            let add = |p: &mut [usize; 4]| {
                *p = [p[0] + t, p[1] + l, p[2] + b, p[3] + r];
            };
            let ok = match &mut self.nodes[j].op {
                Op::Conv { params, .. } => {
                    add(&mut params.pads);
                    params.in_chw = [c, h, w];
                    true
                }
                Op::MaxPool { params, pads } if nonneg => {
                    let mut p = *pads;
                    add(&mut p);
                    let fits = (0..4).all(|a| p[a] < params.kernel[a % 2]);
                    if fits {
                        *pads = p;
                        params.in_chw = [c, h, w];
                    }
                    fits
                }
                Op::AvgPool {
                    params,
                    pads,
                    count_include_pad,
                } if *count_include_pad || *pads == [0; 4] => {
                    let mut p = *pads;
                    add(&mut p);
                    let fits = (0..4).all(|a| p[a] < params.kernel[a % 2]);
                    if fits {
                        *pads = p;
                        *count_include_pad = true;
                        params.in_chw = [c, h, w];
                    }
                    fits
                }
                _ => false,
            };
            if ok {
                self.nodes[j].inputs[0] = x;
                ed.remove(i);
                ed.busy[j] = true;
            }
        }
        self.finish(ed)
    }

    /// `a` (broadcast to the shape of value `v`) moved through the layout changes `chain`:
    /// the same elements in the coordinates of the chain's output. Scalars stay scalars.
    fn through(&self, a: &ArrayD<f32>, v: ValueId, chain: &[usize]) -> Option<ArrayD<f32>> {
        if let (1, Some(v)) = (a.len(), a.iter().next()) {
            return Some(ArrayD::from_elem(IxDyn(&[]), *v));
        }
        if chain.is_empty() {
            return Some(a.clone());
        }
        let shape = &self.values[v].shape;
        let mut cur: ArrayD<f32> = a.broadcast(IxDyn(shape))?.to_owned();
        for &c in chain {
            let out = &self.values[self.nodes[c].output].shape;
            let data: Vec<f32> = match &self.nodes[c].op {
                Op::Transpose { perm } => cur
                    .view()
                    .permuted_axes(IxDyn(perm))
                    .iter()
                    .copied()
                    .collect(),
                _ => cur.iter().copied().collect(),
            };
            cur = ArrayD::from_shape_vec(IxDyn(out), data).ok()?;
        }
        Some(cur)
    }

    /// Recognises activations that exporters write as several elementwise nodes: a `Mul`
    /// whose operands are one value `v` and (through scalar `Affine`s, `Erf`, `Tanh`,
    /// `Sigmoid`, `Pow`, `Clip`, `Relu`, and sums or products of such) functions of `v` only
    /// computes some `f(v)`; it is evaluated on a grid and, when it is swish, gelu (erf or tanh
    /// form) or hard_swish to within 1e-4, the `Mul` becomes that activation of `v`. The
    /// nodes it read go once nothing else reads them.
    fn fuse_activations(&mut self) -> bool {
        let u = Uses::of(self);
        let mut changed = false;
        for root in 0..self.nodes.len() {
            if !matches!(self.nodes[root].op, Op::Mul) {
                continue;
            }
            // Walk back from the operands, always expanding the latest value, until one
            // value is left: the activation's input.
            let mut frontier: Vec<ValueId> = self.nodes[root].inputs.clone();
            let mut cone = vec![root];
            let leaf = loop {
                frontier.sort_unstable();
                frontier.dedup();
                if let [v] = frontier[..] {
                    break Some(v);
                }
                let Some(&v) = frontier.last() else {
                    break None;
                };
                let Some(p) = u.producer[v] else { break None };
                let elementwise = match &self.nodes[p].op {
                    Op::Affine { scale, shift } => scale.len() == 1 && shift.len() == 1,
                    Op::Erf
                    | Op::Tanh
                    | Op::Sigmoid
                    | Op::Pow { .. }
                    | Op::Clip { .. }
                    | Op::Relu
                    | Op::Add
                    | Op::Sub
                    | Op::Mul => true,
                    _ => false,
                };
                if !elementwise || cone.len() > 24 {
                    break None;
                }
                frontier.pop();
                frontier.extend(self.nodes[p].inputs.iter().copied());
                cone.push(p);
            };
            let Some(leaf) = leaf else { continue };
            let Some(act) = self.identify(&cone, leaf) else {
                continue;
            };
            let n = &mut self.nodes[root];
            n.op = Op::Act(act);
            n.inputs = vec![leaf];
            changed = true;
        }
        changed
    }

    /// The activation that the elementwise nodes `cone` (its first the root) compute from
    /// value `leaf`, if it is one this recognises.
    fn identify(&self, cone: &[usize], leaf: ValueId) -> Option<crate::ir::Activation> {
        use crate::ir::Activation;
        const GRID: usize = 481;
        // The nodes in order, on values of shape [GRID] renumbered from 0 (the leaf).
        let mut order = cone.to_vec();
        order.sort_unstable();
        let mut ids: HashMap<ValueId, ValueId> = HashMap::new();
        ids.insert(leaf, 0);
        let mut nodes = Vec::new();
        for &i in &order {
            let n = &self.nodes[i];
            let inputs = n
                .inputs
                .iter()
                .map(|v| ids.get(v).copied())
                .collect::<Option<Vec<_>>>()?;
            let op = match &n.op {
                Op::Affine { scale, shift } => Op::Affine {
                    scale: ArrayD::from_elem(IxDyn(&[]), *scale.iter().next()?),
                    shift: ArrayD::from_elem(IxDyn(&[]), *shift.iter().next()?),
                },
                op => op.clone(),
            };
            let out = ids.len();
            ids.insert(n.output, out);
            nodes.push(super::Node {
                name: n.name.clone(),
                op,
                inputs,
                output: out,
            });
        }
        let output = *ids.get(&self.nodes[cone[0]].output)?;
        let g = Graph {
            input_name: String::new(),
            input: 0,
            values: vec![super::Value { shape: vec![GRID] }; ids.len()],
            nodes,
            output,
            output_name: String::new(),
            softmax_at_client: false,
        };
        let xs: Vec<f32> = (0..GRID).map(|i| (i as f32 - 240.0) / 20.0).collect();
        let ys = g.forward(&xs, 1).ok()?;
        [
            Activation::Swish,
            Activation::Gelu,
            Activation::GeluTanh,
            Activation::HardSwish,
        ]
        .into_iter()
        .find(|a| {
            xs.iter().zip(&ys).all(|(x, y)| {
                let want = a.eval(f64::from(*x));
                (y - want).abs() <= 1e-4 * (1.0 + want.abs())
            })
        })
    }

    /// Removes the flagged nodes and renames values as `ed.subst` says.
    fn finish(&mut self, ed: Edit) -> bool {
        if ed.rewritten || ed.removed.iter().any(|r| *r) {
            self.apply(&ed.removed, &ed.subst);
            true
        } else {
            false
        }
    }

    fn apply(&mut self, removed: &[bool], subst: &HashMap<ValueId, ValueId>) {
        let resolve = |mut v: ValueId| {
            for _ in 0..=subst.len() {
                match subst.get(&v) {
                    Some(&u) => v = u,
                    None => break,
                }
            }
            v
        };
        let mut k = 0;
        self.nodes.retain(|_| {
            k += 1;
            !removed.get(k - 1).copied().unwrap_or(false)
        });
        for n in &mut self.nodes {
            for v in &mut n.inputs {
                *v = resolve(*v);
            }
        }
        self.output = resolve(self.output);
    }

    /// Drops values no node reads or writes and renumbers the rest in order of appearance.
    fn compact(&mut self) {
        let mut map = vec![usize::MAX; self.values.len()];
        let mut values = Vec::new();
        let mut take = |v: ValueId, values: &mut Vec<super::Value>| {
            if map[v] == usize::MAX {
                map[v] = values.len();
                values.push(self.values[v].clone());
            }
            map[v]
        };
        let input = take(self.input, &mut values);
        let mut nodes = std::mem::take(&mut self.nodes);
        for n in &mut nodes {
            for v in &mut n.inputs {
                *v = take(*v, &mut values);
            }
            n.output = take(n.output, &mut values);
        }
        self.output = take(self.output, &mut values);
        self.input = input;
        self.nodes = nodes;
        self.values = values;
    }
}

/// Readers and writers of each value.
struct Uses {
    readers: Vec<Vec<usize>>,
    producer: Vec<Option<usize>>,
}

impl Uses {
    fn of(g: &Graph) -> Uses {
        let mut readers = vec![Vec::new(); g.values.len()];
        let mut producer = vec![None; g.values.len()];
        for (i, n) in g.nodes.iter().enumerate() {
            for &v in &n.inputs {
                readers[v].push(i);
            }
            producer[n.output] = Some(i);
        }
        Uses { readers, producer }
    }

    /// The one node reading `v`, when nothing else (not even the graph output) does.
    fn sole_reader(&self, g: &Graph, v: ValueId) -> Option<usize> {
        match self.readers[v][..] {
            [r] if v != g.output => Some(r),
            _ => None,
        }
    }
}

/// One sweep's edits: nodes to remove, value renames, nodes already rewritten.
struct Edit {
    removed: Vec<bool>,
    busy: Vec<bool>,
    subst: HashMap<ValueId, ValueId>,
    /// A node was changed in place.
    rewritten: bool,
}

impl Edit {
    fn new(g: &Graph) -> Edit {
        Edit {
            removed: vec![false; g.nodes.len()],
            busy: vec![false; g.nodes.len()],
            subst: HashMap::new(),
            rewritten: false,
        }
    }

    fn remove(&mut self, i: usize) {
        self.removed[i] = true;
        self.busy[i] = true;
    }

    /// Removes node `i`, whose output `out` equals its input `x`.
    fn drop_node(&mut self, i: usize, out: ValueId, x: ValueId) {
        self.remove(i);
        self.subst.insert(out, x);
    }
}

/// `a` as one number per channel (axis 0) of a value of `shape`, if it is constant over the
/// other axes.
fn per_channel(a: &ArrayD<f32>, shape: &[usize]) -> Option<Vec<f64>> {
    let full = a.broadcast(IxDyn(shape))?;
    let c = *shape.first()?;
    (0..c)
        .map(|ch| {
            let plane = full.index_axis(Axis(0), ch);
            let first = *plane.iter().next()?;
            plane
                .iter()
                .all(|v| *v == first)
                .then_some(f64::from(first))
        })
        .collect()
}

/// Folds `x ↦ x·s + t` (broadcast to the op's input shape `in_shape`) into the `Dense` or
/// `Conv` `op` that reads it; false (and `op` unchanged) when that is not exact.
fn fold_into_next(op: &mut Op, s: &ArrayD<f32>, t: &ArrayD<f32>, in_shape: &[usize]) -> bool {
    match op {
        Op::Dense {
            inputs,
            outputs,
            weights,
            bias,
        } => {
            let (Some(s), Some(t)) = (
                s.broadcast(IxDyn(&[*inputs])),
                t.broadcast(IxDyn(&[*inputs])),
            ) else {
                return false;
            };
            let o = (*outputs).max(1);
            for ((row, si), ti) in weights.chunks_mut(o).zip(s.iter()).zip(t.iter()) {
                for (w, b) in row.iter_mut().zip(bias.iter_mut()) {
                    let w0 = f64::from(*w);
                    *b = (f64::from(*b) + w0 * f64::from(*ti)) as f32;
                    *w = (w0 * f64::from(*si)) as f32;
                }
            }
            true
        }
        Op::Conv {
            params,
            group,
            weights,
            bias,
        } => {
            let (Some(s), Some(t)) = (per_channel(s, in_shape), per_channel(t, in_shape)) else {
                return false;
            };
            if t.iter().any(|v| *v != 0.0) && params.pads != [0; 4] {
                return false;
            }
            let (o, c) = (params.out_channels, params.in_chw[0]);
            let g = (*group).max(1);
            let (cg, og) = (c / g, (o / g).max(1));
            let k = params.kernel[0] * params.kernel[1];
            if s.len() != c || elements(&[o, cg, k]) != Some(weights.len()) {
                return false;
            }
            for (oc, (filter, b)) in weights.chunks_mut((cg * k).max(1)).zip(bias).enumerate() {
                let c0 = (oc / og) * cg;
                let mut add = 0f64;
                for (cc, ker) in filter.chunks_mut(k.max(1)).enumerate() {
                    for w in ker {
                        let w0 = f64::from(*w);
                        add += w0 * t[c0 + cc];
                        *w = (w0 * s[c0 + cc]) as f32;
                    }
                }
                *b = (f64::from(*b) + add) as f32;
            }
            true
        }
        _ => false,
    }
}
