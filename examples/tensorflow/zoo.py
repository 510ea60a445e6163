"""Export a zoo of small Keras models with tf2onnx, with TensorFlow's own outputs, as test fixtures.

Each model exercises one Keras building block (or a small combination) that sotto's importer has
to handle (issue 11): BatchNormalization anywhere, GlobalAveragePooling2D, Rescaling/Normalization,
residual Add, Concatenate, ReLU6/LeakyReLU/ELU/swish/gelu/hard_sigmoid/hard_swish, depthwise,
separable and grouped convolutions, 'same' pooling, ZeroPadding2D, softmax and sigmoid heads, and a
mini ResNet / MobileNetV2 block. Weights are random but non-trivial (seeded per model): biases are
nonzero, BatchNormalization gets random gamma (some negative) and beta, and moving statistics taken
from the layer's real input on calibration data and then perturbed, so folding bugs show; the last
Dense is scaled so logits have std about 1 (2 before a softmax or sigmoid) on calibration data.

For every model NAME it writes into --out:
  NAME.onnx          tf2onnx.convert.from_keras, dynamic batch, opset 13 (NAME_op17.onnx: opset 17)
  NAME_inputs.npy    float32 [16, ...], exactly the Keras input layout (NHWC for images)
  NAME_tf.npy        float32 model(x, training=False) for those inputs
  NAME_tf_logits.npy (softmax-ended models only) the pre-softmax logits
and zoo.json describing each model (layers, input shape and bound, output kind, ONNX ops, opset).

--large DIR exports tf.keras.applications MobileNetV2 (96x96, alpha 0.35 and 1.0) and
ResNet50 (224x224), weights=None but seeded, the same way (not for CI: tens of MB).

Usage: python zoo.py --out DIR [--only a,b] [--large DIR]   (or: bash zoo.sh DIR [--large DIR])
"""

import argparse
import json
import logging
import os
import sys
import time
import zlib

import numpy as np
import tensorflow as tf
import tf2onnx
import onnx

L = tf.keras.layers
N_INPUTS = 16      # fixture inputs per model
N_CALIB = 64       # calibration inputs for the BatchNormalization moving statistics

# Input distributions. `bound` is the declared input bound: every input satisfies |x| <= bound.
DISTS = {
    "unit": {"desc": "uniform float in [0, 1)", "low": 0.0, "high": 1.0, "bound": 1.0},
    "sym": {"desc": "uniform float in [-1, 1)", "low": -1.0, "high": 1.0, "bound": 1.0},
    "pixels": {"desc": "uniform integer pixel values 0..255 stored as float32", "low": 0.0,
               "high": 255.0, "bound": 255.0},
    "caffe": {"desc": "uniform integer pixels 0..255 (BGR) minus the ImageNet caffe means "
                      "[103.939, 116.779, 123.68] (keras resnet50.preprocess_input)",
              "low": -123.68, "high": 151.061, "bound": 152.0},
}


def draw(dist, n, shape, rng):
    if dist in ("unit", "sym"):
        d = DISTS[dist]
        return rng.uniform(d["low"], d["high"], size=(n,) + shape).astype(np.float32)
    px = rng.integers(0, 256, size=(n,) + shape).astype(np.float32)
    if dist == "pixels":
        return px
    if dist == "caffe":
        return (px - np.array([103.939, 116.779, 123.68], np.float32)).astype(np.float32)
    raise ValueError(dist)


def inp(shape):
    return tf.keras.Input(shape=shape, name="input")


def functional(name, build, shape):
    x = inp(shape)
    return tf.keras.Model(x, build(x), name=name)


def head(y, n=5, act=None):
    return L.Dense(n, activation=act, name="logits" if act is None else "predictions")(y)


# ---------------------------------------------------------------------------------------------
# The small models. Each entry: name, input shape, distribution, output kind, what it exercises,
# builder, options (opsets, kernel_scale for the first Dense/Conv so activations reach their
# interesting ranges).

def m_conv_relu_then_bn(x):
    y = L.Conv2D(4, 3, activation="relu")(x)
    y = L.BatchNormalization()(y)
    return head(L.Flatten()(y))


def m_dense_bn(x):
    y = L.Dense(12)(x)
    y = L.BatchNormalization()(y)
    y = L.ReLU()(y)
    return head(y)


def m_gap(x):
    y = L.Conv2D(6, 3)(x)
    y = L.ReLU()(y)
    return head(L.GlobalAveragePooling2D()(y))


def m_cnn_same_bn_dropout(x):
    y = L.Conv2D(6, 3, padding="same", use_bias=False)(x)
    y = L.BatchNormalization()(y)
    y = L.ReLU()(y)
    y = L.Dropout(0.25)(y)
    y = L.Conv2D(8, 3, padding="same", strides=2)(y)
    y = L.BatchNormalization()(y)
    y = L.ReLU()(y)
    y = L.GlobalAveragePooling2D()(y)
    y = L.Dropout(0.5)(y)
    return head(y)


def m_rescaling_first(x):
    y = L.Rescaling(1.0 / 255)(x)
    y = L.Conv2D(4, 3, activation="relu")(y)
    return head(L.Flatten()(y))


def m_rescaling_offset_first(x):
    # MobileNet-style preprocessing inside the model: x / 127.5 - 1
    y = L.Rescaling(1.0 / 127.5, offset=-1.0)(x)
    y = L.Conv2D(4, 3, activation="relu")(y)
    return head(L.GlobalAveragePooling2D()(y))


def m_normalization_first(x):
    y = L.Normalization(mean=[127.5, 120.0, 110.0], variance=[5400.0, 4900.0, 4500.0])(x)
    y = L.Conv2D(4, 3, activation="relu")(y)
    return head(L.Flatten()(y))


def m_residual_add(x):
    f = L.Conv2D(3, 3, padding="same")(x)
    f = L.ReLU()(f)
    f = L.Conv2D(3, 3, padding="same")(f)
    y = L.Add()([x, f])
    y = L.ReLU()(y)
    return head(L.GlobalAveragePooling2D()(y))


def m_concat(x):
    a = L.Conv2D(4, 3, padding="same", activation="relu")(x)
    b = L.Conv2D(2, 1, activation="relu")(x)
    y = L.Concatenate(axis=-1)([a, b])
    y = L.Conv2D(4, 3, strides=2)(y)
    y = L.ReLU()(y)
    return head(L.Flatten()(y))


def mlp_act(act_layer):
    def build(x):
        y = L.Dense(12, name="pre")(x)
        y = act_layer()(y)
        return head(y)
    return build


def hard_swish_block(y):
    # exactly keras.applications.mobilenet_v3's hard_swish: x * ReLU6(x + 3) / 6
    h = L.ReLU(6.0)(L.Lambda(lambda t: t + 3.0, name="plus3")(y))
    h = L.Lambda(lambda t: t * (1.0 / 6.0), name="div6")(h)
    return L.Multiply()([y, h])


def m_hard_swish(x):
    y = L.Dense(12, name="pre")(x)
    return head(hard_swish_block(y))


def m_mlp_mixed_act(x):
    y = L.Dense(16, name="pre")(x)
    y = L.ReLU(6.0)(y)
    y = L.Dense(16)(y)
    y = L.LeakyReLU(alpha=0.1)(y)
    y = L.Dense(16)(y)
    y = L.ELU()(y)
    return head(y)


def m_depthwise(x):
    y = L.DepthwiseConv2D(3, padding="same")(x)
    y = L.ReLU()(y)
    return head(L.Flatten()(y))


def m_depthwise_mult2(x):
    y = L.DepthwiseConv2D(3, strides=2, depth_multiplier=2)(x)
    y = L.ReLU()(y)
    return head(L.Flatten()(y))


def m_separable(x):
    y = L.SeparableConv2D(6, 3, padding="same")(x)
    y = L.ReLU()(y)
    return head(L.GlobalAveragePooling2D()(y))


def m_grouped(x):
    y = L.Conv2D(6, 3, groups=2)(x)
    y = L.ReLU()(y)
    return head(L.Flatten()(y))


def m_padded_pool(x):
    y = L.Conv2D(4, 3, padding="same")(x)                         # no ReLU: negatives reach the max pool
    y = L.MaxPooling2D(3, strides=2, padding="same")(y)           # 8x8 -> 4x4, pads 0 before / 1 after
    y = L.AveragePooling2D(3, strides=1, padding="same")(y)       # 4x4 -> 4x4, pads 1/1, edge counts < 9
    y = L.ReLU()(y)
    return head(L.Flatten()(y))


def m_zero_pad(x):
    y = L.ZeroPadding2D(((1, 2), (0, 1)))(x)                      # asymmetric
    y = L.Conv2D(4, 3, strides=2)(y)
    y = L.ReLU()(y)
    y = L.ZeroPadding2D(1)(y)                                     # ResNet50's stem: pad, then max pool
    y = L.MaxPooling2D(3, strides=2)(y)
    return head(L.Flatten()(y))


def m_softmax_end(x):
    y = L.Conv2D(4, 3, activation="relu")(x)
    y = L.Flatten()(y)
    return head(y, 10, act="softmax")


def m_softmax_layer_end(x):
    y = L.Dense(12, activation="relu")(x)
    y = L.Dense(6, name="logits")(y)
    return L.Softmax(name="probs")(y)


def m_sigmoid_end(x):
    y = L.Dense(8, activation="relu")(x)
    return L.Dense(1, activation="sigmoid", name="predictions")(y)


def conv_bn(y, filters, k, strides=1, relu=True):
    y = L.Conv2D(filters, k, strides=strides, padding="same", use_bias=False)(y)
    y = L.BatchNormalization()(y)
    return L.ReLU()(y) if relu else y


def m_mini_resnet(x):
    y = conv_bn(x, 8, 3)
    # block 1: identity shortcut
    f = conv_bn(y, 8, 3)
    f = conv_bn(f, 8, 3, relu=False)
    y = L.ReLU()(L.Add()([y, f]))
    # block 2: stride 2, 1x1 strided projection shortcut with BN
    f = conv_bn(y, 16, 3, strides=2)
    f = conv_bn(f, 16, 3, relu=False)
    s = conv_bn(y, 16, 1, strides=2, relu=False)
    y = L.ReLU()(L.Add()([s, f]))
    y = L.GlobalAveragePooling2D()(y)
    return head(y, 10)


def m_mini_mobilenet(x):
    y = L.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(x)
    y = L.BatchNormalization()(y)
    y = L.ReLU(6.0)(y)
    # inverted residual (MobileNetV2): expand 1x1 (x4), ReLU6, depthwise 3x3, ReLU6, project 1x1, add
    f = L.Conv2D(32, 1, use_bias=False)(y)
    f = L.BatchNormalization()(f)
    f = L.ReLU(6.0)(f)
    f = L.DepthwiseConv2D(3, padding="same", use_bias=False)(f)
    f = L.BatchNormalization()(f)
    f = L.ReLU(6.0)(f)
    f = L.Conv2D(8, 1, use_bias=False)(f)
    f = L.BatchNormalization()(f)
    y = L.Add()([y, f])
    y = L.GlobalAveragePooling2D()(y)
    return head(y, 10)


IMG = (8, 8, 3)
VEC = (16,)
SMALL = [
    # name, shape, dist, output kind, exercises, builder, options
    ("conv_relu_then_bn", IMG, "unit", "logits",
     "Conv2D(activation='relu') -> BatchNormalization (BN after the ReLU: not foldable into the conv) -> Flatten -> Dense",
     m_conv_relu_then_bn, {"opsets": (13, 17)}),
    ("dense_bn", VEC, "sym", "logits",
     "Dense -> BatchNormalization -> ReLU -> Dense (BN after a Dense)",
     m_dense_bn, {}),
    ("gap", IMG, "unit", "logits",
     "Conv2D -> ReLU -> GlobalAveragePooling2D -> Dense",
     m_gap, {}),
    ("cnn_same_bn_dropout", IMG, "unit", "logits",
     "Conv2D('same', no bias) -> BN -> ReLU -> Dropout -> Conv2D('same', stride 2) -> BN -> ReLU -> GAP -> Dropout -> Dense",
     m_cnn_same_bn_dropout, {}),
    ("rescaling_first", IMG, "pixels", "logits",
     "Rescaling(1/255) as the first layer -> Conv2D(relu) -> Flatten -> Dense",
     m_rescaling_first, {}),
    ("rescaling_offset_first", IMG, "pixels", "logits",
     "Rescaling(1/127.5, offset=-1) as the first layer -> Conv2D(relu) -> GAP -> Dense",
     m_rescaling_offset_first, {}),
    ("normalization_first", IMG, "pixels", "logits",
     "Normalization(mean=[127.5,120,110], variance=[5400,4900,4500]) as the first layer -> Conv2D(relu) -> Flatten -> Dense",
     m_normalization_first, {}),
    ("residual_add", IMG, "unit", "logits",
     "x -> Conv2D('same') -> ReLU -> Conv2D('same'); Add()([x, f(x)]) -> ReLU -> GAP -> Dense",
     m_residual_add, {}),
    ("concat", IMG, "unit", "logits",
     "two Conv2D branches (3x3 'same' and 1x1) -> Concatenate(axis=-1) -> Conv2D(stride 2) -> ReLU -> Flatten -> Dense",
     m_concat, {}),
    ("relu6", VEC, "sym", "logits",
     "Dense -> ReLU(max_value=6) (Keras calls tf.nn.relu6) -> Dense",
     mlp_act(lambda: L.ReLU(6.0)), {"kernel_scale": 10.0}),
    ("relu6_activation", VEC, "sym", "logits",
     "Dense -> Activation(tf.nn.relu6) -> Dense",
     mlp_act(lambda: L.Activation(tf.nn.relu6)), {"kernel_scale": 10.0}),
    ("relu_max4", VEC, "sym", "logits",
     "Dense -> ReLU(max_value=4) (Keras: relu then clip_by_value) -> Dense",
     mlp_act(lambda: L.ReLU(4.0)), {"kernel_scale": 8.0}),
    ("leaky_relu", VEC, "sym", "logits",
     "Dense -> LeakyReLU(alpha=0.1) -> Dense",
     mlp_act(lambda: L.LeakyReLU(alpha=0.1)), {"kernel_scale": 3.0}),
    ("elu", VEC, "sym", "logits",
     "Dense -> ELU() (alpha 1) -> Dense",
     mlp_act(lambda: L.ELU()), {"kernel_scale": 3.0}),
    ("swish", VEC, "sym", "logits",
     "Dense -> Activation('swish') -> Dense",
     mlp_act(lambda: L.Activation("swish")), {"kernel_scale": 4.0}),
    ("gelu", VEC, "sym", "logits",
     "Dense -> Activation('gelu') (exact, erf) -> Dense",
     mlp_act(lambda: L.Activation("gelu")), {"kernel_scale": 4.0}),
    ("gelu_tanh", VEC, "sym", "logits",
     "Dense -> gelu(approximate=True) (tanh form) -> Dense",
     mlp_act(lambda: L.Activation(lambda t: tf.keras.activations.gelu(t, approximate=True),
                                  name="gelu_tanh")), {"kernel_scale": 4.0}),
    ("hard_sigmoid", VEC, "sym", "logits",
     "Dense -> Activation('hard_sigmoid') (Keras 2: clip(0.2 x + 0.5, 0, 1)) -> Dense",
     mlp_act(lambda: L.Activation("hard_sigmoid")), {"kernel_scale": 6.0}),
    ("hard_swish", VEC, "sym", "logits",
     "Dense -> hard_swish as in keras.applications MobileNetV3: x * ReLU(6)(x + 3) / 6 -> Dense",
     m_hard_swish, {"kernel_scale": 8.0, "opsets": (13, 17)}),
    ("mlp_mixed_act", VEC, "sym", "logits",
     "Dense -> ReLU(6) -> Dense -> LeakyReLU(0.1) -> Dense -> ELU -> Dense",
     m_mlp_mixed_act, {"kernel_scale": 10.0}),
    ("depthwise", IMG, "unit", "logits",
     "DepthwiseConv2D(3x3, 'same') -> ReLU -> Flatten -> Dense",
     m_depthwise, {}),
    ("depthwise_mult2", IMG, "unit", "logits",
     "DepthwiseConv2D(3x3, stride 2, depth_multiplier=2, 'valid') -> ReLU -> Flatten -> Dense",
     m_depthwise_mult2, {}),
    ("separable", IMG, "unit", "logits",
     "SeparableConv2D(6, 3x3, 'same') -> ReLU -> GAP -> Dense",
     m_separable, {}),
    ("grouped", (8, 8, 4), "unit", "logits",
     "Conv2D(6, 3x3, groups=2) -> ReLU -> Flatten -> Dense",
     m_grouped, {}),
    ("padded_pool", IMG, "unit", "logits",
     "Conv2D('same') -> MaxPooling2D(3, stride 2, 'same') on signed values -> AveragePooling2D(3, stride 1, 'same') -> ReLU -> Flatten -> Dense",
     m_padded_pool, {}),
    ("zero_pad", IMG, "unit", "logits",
     "ZeroPadding2D(((1,2),(0,1))) -> Conv2D(stride 2, 'valid') -> ReLU -> ZeroPadding2D(1) -> MaxPooling2D(3, stride 2) -> Flatten -> Dense",
     m_zero_pad, {}),
    ("softmax_end", IMG, "unit", "softmax",
     "Conv2D(relu) -> Flatten -> Dense(10, activation='softmax')",
     m_softmax_end, {}),
    ("softmax_layer_end", VEC, "sym", "softmax",
     "Dense(relu) -> Dense(6) -> Softmax() layer",
     m_softmax_layer_end, {}),
    ("sigmoid_end", VEC, "sym", "sigmoid",
     "Dense(relu) -> Dense(1, activation='sigmoid') (one output)",
     m_sigmoid_end, {}),
    ("mini_resnet", (12, 12, 1), "unit", "logits",
     "Conv-BN-ReLU stem, identity residual block, stride-2 residual block with 1x1 strided Conv+BN projection shortcut, GAP, Dense(10)",
     m_mini_resnet, {"opsets": (13, 17)}),
    ("mini_mobilenet", IMG, "unit", "logits",
     "Conv(stride 2)-BN-ReLU6 stem, inverted residual: expand 1x1-BN-ReLU6, DepthwiseConv 3x3-BN-ReLU6, project 1x1-BN (linear), Add; GAP, Dense(10)",
     m_mini_mobilenet, {"opsets": (13, 17)}),
]


# ---------------------------------------------------------------------------------------------

def seed_for(name, base):
    return (base * 1000003 + zlib.crc32(name.encode())) % (2 ** 31)


def randomize(model, rng, x_calib, kernel_scale=1.0, perturb_bn=True):
    """Non-trivial weights: nonzero biases, random BN gamma/beta, BN moving statistics from the
    layer's real input on x_calib (one training-mode pass with momentum 0), then perturbed."""
    first = True
    for layer in model.layers:
        if isinstance(layer, (L.Dense, L.Conv2D)) and first and kernel_scale != 1.0:
            w = layer.get_weights()
            w[0] = w[0] * kernel_scale
            layer.set_weights(w)
            first = False
        for v in layer.weights:
            if v.name.endswith("bias:0") and not isinstance(layer, L.BatchNormalization):
                v.assign(rng.uniform(-0.2, 0.2, size=v.shape).astype(np.float32))
    bns = [l for l in model.layers if isinstance(l, L.BatchNormalization)]
    if not bns:
        return
    for bn in bns:
        c = bn.gamma.shape
        sign = np.where(rng.random(c) < 0.25, -1.0, 1.0)
        bn.gamma.assign((rng.uniform(0.5, 1.5, c) * sign).astype(np.float32))
        bn.beta.assign(rng.uniform(-0.3, 0.3, c).astype(np.float32))
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.momentum = 0.0
    model(x_calib, training=True)
    for bn, m in zip(bns, saved):
        bn.momentum = m
    if perturb_bn:
        for bn in bns:
            c = bn.gamma.shape
            mean, var = bn.moving_mean.numpy(), bn.moving_variance.numpy()
            bn.moving_mean.assign((mean + rng.normal(0, 0.25, c) * np.sqrt(var)).astype(np.float32))
            bn.moving_variance.assign((var * rng.uniform(0.5, 2.0, c)).astype(np.float32))


def scale_head(model, x_calib, target_std):
    """Scale the last Dense layer so its pre-activation output has std target_std on x_calib:
    logits of about unit scale, softmax/sigmoid outputs that are not all near 1/n or 0.5."""
    last = [l for l in model.layers if isinstance(l, L.Dense)][-1]
    z = tf.keras.Model(model.inputs, last.output)(x_calib, training=False)
    if last.activation is not tf.keras.activations.linear:
        w, b = last.get_weights()
        z = tf.keras.Model(model.inputs, last.input)(x_calib, training=False).numpy() @ w + b
    k = target_std / max(float(np.std(z)), 1e-6)
    last.set_weights([w * k for w in last.get_weights()])


def pre_softmax_logits(model, x):
    last = model.layers[-1]
    feats = tf.keras.Model(model.inputs, last.input)(x, training=False).numpy()
    if isinstance(last, L.Dense):
        w, b = last.get_weights()
        return (feats @ w + b).astype(np.float32)
    return feats.astype(np.float32)


def export(model, name, shape, opset, out_dir):
    spec = (tf.TensorSpec((None,) + tuple(shape), tf.float32, name="input"),)
    path = os.path.join(out_dir, f"{name}.onnx")
    tf2onnx.utils.INTERNAL_NAME = 1  # node-name counter: same file whatever was exported before
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset, output_path=path)
    onnx.checker.check_model(proto)
    counts = {}
    for n in proto.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    got_opset = [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")][0]
    return {"onnx": f"{name}.onnx", "opset": got_opset, "onnx_ops": sorted(counts),
            "onnx_op_counts": dict(sorted(counts.items())),
            "onnx_input": proto.graph.input[0].name,
            "onnx_outputs": [o.name for o in proto.graph.output],
            "onnx_bytes": os.path.getsize(path)}


def build_and_export(name, shape, dist, kind, what, build, opts, out_dir, base_seed, large=False):
    t0 = time.time()
    seed = seed_for(name, base_seed)
    tf.keras.backend.clear_session()  # layer (and so ONNX node) names independent of --only
    tf.keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    model = build() if large else functional(name, build, shape)
    x_cal = draw(dist, opts.get("n_calib", N_CALIB), shape, rng)
    x = draw(dist, N_INPUTS, shape, rng)
    randomize(model, rng, x_cal, opts.get("kernel_scale", 1.0), perturb_bn=not large)
    scale_head(model, x_cal, 1.0 if kind == "logits" else 2.0)
    y = model(x, training=False).numpy().astype(np.float32)
    base = {"name": name, "exercises": what,
            "keras_layers": sorted({type(l).__name__ for l in model.layers} - {"InputLayer"}),
            "input_shape": [None] + list(shape), "input_layout": "NHWC" if len(shape) == 3 else "NC",
            "input_distribution": DISTS[dist]["desc"], "input_bound": DISTS[dist]["bound"],
            "output_kind": kind, "output_shape": [None] + list(y.shape[1:]),
            "keras_params": int(model.count_params()), "seed": seed,
            "inputs": f"{name}_inputs.npy", "tf_outputs": f"{name}_tf.npy"}
    assert np.isfinite(y).all(), name
    entries = []
    for opset in opts.get("opsets", (13,)):
        fname = name if opset == 13 else f"{name}_op{opset}"
        e = dict(base, name=fname, inputs=f"{fname}_inputs.npy", tf_outputs=f"{fname}_tf.npy")
        try:
            try:
                e.update(export(model, fname, shape, opset, out_dir))
            except Exception as err:
                grouped = [l for l in model.layers if getattr(l, "groups", 1) > 1]
                if not grouped:
                    raise
                # Keras 2.15 runs Conv2D(groups>1) inside tf.function(jit_compile=True) (a CPU
                # workaround), which reaches tf2onnx as a PartitionedCall it cannot convert. The
                # plain tf.nn.convolution computes the same thing and tf2onnx maps it to Conv
                # with group=in/kernel_in; swap it in for the export only.
                for l in grouped:
                    l._jit_compiled_convolution_op = l.convolution_op
                e.update(export(model, fname, shape, opset, out_dir))
                e["export_note"] = (
                    "as Keras builds it, tf2onnx fails (" + f"{type(err).__name__}: {err}"[:300] +
                    "): Keras wraps grouped Conv2D in tf.function(jit_compile=True) -> PartitionedCall. "
                    "zoo.py exports it with the layer's plain convolution_op swapped in for tracing "
                    "(same weights and math); users must do the same.")
        except Exception as err:  # record what tf2onnx cannot export
            entries.append({"name": fname, "exercises": what, "opset": opset,
                            "skipped": f"tf2onnx {tf2onnx.__version__} failed: {type(err).__name__}: {err}"[:600]})
            print(f"{fname}: SKIPPED ({type(err).__name__}: {str(err)[:200]})", flush=True)
            continue
        np.save(os.path.join(out_dir, e["inputs"]), x)
        np.save(os.path.join(out_dir, e["tf_outputs"]), y)
        if kind == "softmax":
            logits = pre_softmax_logits(model, x)
            z = np.exp(logits - logits.max(1, keepdims=True))
            assert np.allclose(z / z.sum(1, keepdims=True), y, atol=1e-5), name
            e["tf_logits"] = f"{fname}_tf_logits.npy"
            np.save(os.path.join(out_dir, e["tf_logits"]), logits)
        entries.append(e)
        print(f"{fname}: opset {e['opset']}, {e['onnx_bytes']} B, out std {y.std():.3f}, "
              f"ops {e['onnx_ops']}, {time.time() - t0:.1f} s", flush=True)
    return entries


def cifar_cnn():
    """The 6-layer CIFAR-10 CNN of the scale issue's targets: 'same' convs 32-32-64-64 with ReLU,
    a 2x2 max pool after each pair, Dense(128, relu), Dense(10)."""
    x = inp((32, 32, 3))
    y = x
    for filters in (32, 64):
        for _ in range(2):
            y = L.Conv2D(filters, 3, padding="same", activation="relu")(y)
        y = L.MaxPooling2D(2)(y)
    y = L.Flatten()(y)
    y = L.Dense(128, activation="relu")(y)
    return tf.keras.Model(x, L.Dense(10)(y), name="cifar_cnn")


LARGE = [
    ("cifar_cnn", (32, 32, 3), "unit", "logits",
     "CIFAR-10-sized CNN: Conv2D('same', relu) 32, 32, MaxPool 2, 64, 64, MaxPool 2, Dense(128, relu), "
     "Dense(10) (untrained, seeded)",
     cifar_cnn, {}),
    ("mobilenetv2_035_96", (96, 96, 3), "sym", "softmax",
     "tf.keras.applications.MobileNetV2(alpha=0.35, input_shape=(96,96,3), weights=None), inputs in "
     "mobilenet_v2.preprocess_input's range",
     lambda: tf.keras.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35, weights=None), {}),
    ("mobilenetv2_100_96", (96, 96, 3), "sym", "softmax",
     "tf.keras.applications.MobileNetV2(alpha=1.0, input_shape=(96,96,3), weights=None)",
     lambda: tf.keras.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=1.0, weights=None), {}),
    ("resnet50_224", (224, 224, 3), "caffe", "softmax",
     "tf.keras.applications.ResNet50(weights=None, input_shape=(224,224,3)), caffe-preprocessed inputs",
     lambda: tf.keras.applications.ResNet50(input_shape=(224, 224, 3), weights=None),
     {"n_calib": 16}),
]


def write_manifest(out_dir, entries, seed, note, only=None):
    path = os.path.join(out_dir, "zoo.json")
    if only and os.path.exists(path):  # --only: keep the other models' entries
        with open(path) as f:
            old = json.load(f)["models"]
        keep = lambda e: e["name"] not in only and e["name"].rsplit("_op", 1)[0] not in only
        entries = [e for e in old if keep(e)] + entries
    manifest = {"note": note, "seed": seed, "tensorflow": tf.__version__,
                "tf2onnx": tf2onnx.__version__, "onnx": onnx.__version__,
                "n_inputs": N_INPUTS, "input_distributions": DISTS, "models": entries}
    with open(path, "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="directory for the small zoo (committed as tests/fixtures/zoo)")
    ap.add_argument("--large", help="directory for MobileNetV2 / ResNet50 (not for CI, not committed)")
    ap.add_argument("--only", help="comma-separated model names (small or large)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not args.out and not args.large:
        ap.error("give --out DIR and/or --large DIR")
    only = set(args.only.split(",")) if args.only else None
    tf.config.threading.set_intra_op_parallelism_threads(2)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.get_logger().setLevel(logging.ERROR)
    logging.getLogger("tf2onnx").setLevel(logging.CRITICAL)  # the grouped-conv failure is reported below
    note = ("Generated by examples/tensorflow/zoo.py; random seeded weights (not trained). "
            "NAME_tf.npy = model(NAME_inputs.npy, training=False).")
    for out_dir, specs, large in ((args.out, SMALL, False), (args.large, LARGE, True)):
        if not out_dir:
            continue
        os.makedirs(out_dir, exist_ok=True)
        entries = []
        for name, shape, dist, kind, what, build, opts in specs:
            if only and name not in only:
                continue
            entries += build_and_export(name, shape, dist, kind, what, build, opts, out_dir,
                                        args.seed, large=large)
        write_manifest(out_dir, entries, args.seed, note, only)
        skipped = [e["name"] for e in entries if "skipped" in e]
        print(f"==> {len(entries) - len(skipped)} exported, {len(skipped)} skipped {skipped} -> {out_dir}")


if __name__ == "__main__":
    sys.exit(main())
