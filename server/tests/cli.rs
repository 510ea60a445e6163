//! The `sotto` command on the bundled models: inspect, eval, share-model, and its errors.

use std::path::PathBuf;
use std::process::Command;

fn models() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models")
}

fn sotto(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sotto"))
        .args(args)
        .output()
        .expect("runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn m(name: &str) -> String {
    models().join(name).display().to_string()
}

#[test]
fn inspect_prints_every_layer_and_totals() {
    let (ok, out, err) = sotto(&["inspect", &m("cnn.onnx")]);
    assert!(ok, "{err}");
    for want in [
        "Conv",
        "MaxPool",
        "AvgPool",
        "Relu",
        "Dense",
        "total per prediction",
    ] {
        assert!(out.contains(want), "missing {want} in\n{out}");
    }
}

#[test]
fn eval_reports_json_and_agrees_with_tensorflow() {
    let (ok, out, err) = sotto(&[
        "eval",
        "--model",
        &m("network_a.onnx"),
        "--input",
        &m("mnist_test_images.npy"),
        "--labels",
        &m("mnist_test_labels.npy"),
        "--reference",
        &m("network_a_tf_logits.npy"),
        "--limit",
        "200",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
    assert_eq!(v["n"], 200);
    assert!(
        v["argmax_agreement_tensorflow"].as_f64().expect("number") >= 0.99,
        "{out}"
    );
    assert!(
        v["max_abs_logit_error_tensorflow"]
            .as_f64()
            .expect("number")
            <= 0.01,
        "{out}"
    );
    for key in [
        "accuracy_float",
        "accuracy_private",
        "argmax_agreement",
        "max_abs_logit_error",
        "ms_per_prediction",
    ] {
        assert!(v[key].is_number(), "{key} missing in {out}");
    }
}

#[test]
fn eval_refuses_inputs_that_do_not_fit() {
    // the labels file has shape [2000], not [N, 784]
    let (ok, _, err) = sotto(&[
        "eval",
        "--model",
        &m("network_a.onnx"),
        "--input",
        &m("mnist_test_labels.npy"),
        "--labels",
        &m("mnist_test_labels.npy"),
    ]);
    assert!(!ok);
    assert!(err.contains("does not fit the model's input"), "{err}");
    let (ok, _, err) = sotto(&["inspect", &m("mnist_test_labels.npy")]);
    assert!(!ok);
    assert!(err.contains("not an ONNX model"), "{err}");
}

#[test]
fn share_model_writes_three_files() {
    let dir = std::env::temp_dir().join(format!("sotto-share-{}", std::process::id()));
    let (ok, out, err) = sotto(&[
        "share-model",
        &m("logistic.onnx"),
        "--out",
        &dir.display().to_string(),
    ]);
    assert!(ok, "{err}");
    for f in ["p0.sotto", "p1.sotto", "helper.sotto"] {
        assert!(dir.join(f).exists(), "{f} missing; {out}");
    }
    let _ = std::fs::remove_dir_all(dir);
}
