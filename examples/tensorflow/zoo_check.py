"""Check a zoo written by zoo.py: every ONNX file passes onnx.checker, its ops match zoo.json, the
fixture arrays have the declared shapes and bounds.

  python zoo_check.py DIR            # table: model, opset, ops, bytes
  python zoo_check.py DIR --details  # also the attributes/constant inputs of the interesting nodes
  python zoo_check.py DIR --run      # also run onnx.reference (pure numpy, slow on big models)
                                     # on the inputs and print max |onnx - tf|
"""

import json
import os
import sys

import numpy as np
import onnx
from onnx import numpy_helper

SHOW = {"Clip", "Conv", "MaxPool", "AveragePool", "Pad", "Squeeze", "BatchNormalization",
        "LeakyRelu", "Elu", "Concat", "Max", "Min", "Pow", "Transpose", "Reshape"}


def details(model):
    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type not in SHOW:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
        ins = [consts[i].tolist() if i in consts and consts[i].size <= 8 else
               (f"const{list(consts[i].shape)}" if i in consts else "x") for i in n.input]
        print(f"    {n.op_type:<18} inputs={ins} {attrs}")


def main():
    out, flags = sys.argv[1], set(sys.argv[2:])
    with open(os.path.join(out, "zoo.json")) as f:
        zoo = json.load(f)
    bad = 0
    for e in zoo["models"]:
        if "skipped" in e:
            print(f"{e['name']:<24} SKIPPED: {e['skipped'][:100]}")
            continue
        path = os.path.join(out, e["onnx"])
        onnx.checker.check_model(path)
        model = onnx.load(path)
        ops = sorted({n.op_type for n in model.graph.node})
        x = np.load(os.path.join(out, e["inputs"]))
        y = np.load(os.path.join(out, e["tf_outputs"]))
        ok = (ops == e["onnx_ops"] and x.dtype == y.dtype == np.float32
              and list(x.shape[1:]) == e["input_shape"][1:] and list(y.shape[1:]) == e["output_shape"][1:]
              and float(np.abs(x).max()) <= e["input_bound"])
        line = f"{e['name']:<24} opset {e['opset']:<3} {os.path.getsize(path):>9} B  {' '.join(ops)}"
        if "--run" in flags:
            from onnx.reference import ReferenceEvaluator
            from onnx.reference.op_run import OpRun

            class BatchNormalization(OpRun):  # onnx 1.16's BatchNormalization_9 uses batch stats
                op_domain = ""

                def _run(self, x, s, b, mean, var, epsilon=1e-5, **_):
                    c = (-1,) + (1,) * (x.ndim - 2)
                    r = lambda v: v.reshape(c)
                    return ((r(s) * (x - r(mean)) / np.sqrt(r(var) + epsilon) + r(b)).astype(x.dtype),)

            ref = ReferenceEvaluator(model, new_ops=[BatchNormalization])
            got = ref.run(None, {model.graph.input[0].name: x})[0]
            err = float(np.abs(got - y).max())
            ok = ok and err < 1e-4 * max(1.0, float(np.abs(y).max()))
            line += f"  max|onnx-tf| {err:.2e}"
        print(line + ("" if ok else "  <-- MISMATCH"))
        bad += not ok
        if "--details" in flags:
            details(model)
    print(f"{len(zoo['models'])} entries, {bad} mismatches")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
