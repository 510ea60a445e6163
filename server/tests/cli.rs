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
fn inspect_says_what_compact_comparisons_change_and_eval_runs_with_them() {
    let (ok, out, err) = sotto(&["inspect", &m("cnn.onnx")]);
    assert!(ok, "{err}");
    assert!(out.contains("11 server rounds"), "{out}");
    assert!(
        out.contains("with --compact-comparisons") && out.contains("13 server rounds (+2)"),
        "{out}"
    );
    let (ok, out, err) = sotto(&["inspect", &m("cnn.onnx"), "--compact-comparisons"]);
    assert!(ok, "{err}");
    assert!(out.contains("13 server rounds"), "{out}");
    assert!(out.contains("MaxPool: FSS max tree, one-bit keys"), "{out}");
    // The same predictions, privately, with the setting.
    let (ok, out, err) = sotto(&[
        "eval",
        "--model",
        &m("cnn.onnx"),
        "--input",
        &m("mnist_test_images.npy"),
        "--labels",
        &m("mnist_test_labels.npy"),
        "--limit",
        "20",
        "--compact-comparisons",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
    assert_eq!(v["n"], 20);
    assert_eq!(v["argmax_agreement"], 1.0, "{out}");
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

/// Runs `sotto share-model` on a bundled model into a fresh directory.
fn share(model: &str, tag: &str, extra: &[&str]) -> (PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("sotto-share-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out_dir = dir.display().to_string();
    let mut args = vec!["share-model", model, "--out", &out_dir];
    args.extend_from_slice(extra);
    let (ok, out, err) = sotto(&args);
    assert!(ok, "{err}");
    (dir, out)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn share_model_writes_the_party_files_and_the_owners_record() {
    use sotto_model::files::{make_set_with, read_file, Role, SetOptions};
    let onnx = std::fs::read(models().join("network_a.onnx")).expect("bundled model");
    let model = sotto_model::import(&onnx).expect("imports");
    let names: Vec<&str> = model.layers.iter().map(|l| l.node.as_str()).collect();
    let plan = sotto_model::Plan::new(&model, Default::default(), 1.0).expect("fits");
    // The SHA-256 of the ONNX file, computed here from its bytes.
    let sha = make_set_with(&plan, &onnx, SetOptions::default())
        .expect("a set")
        .record
        .model_sha256;
    assert_eq!(sha.len(), 64);

    let (dir, out) = share(&m("network_a.onnx"), "default", &[]);
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("set.json")).expect("set.json"))
            .expect("JSON");
    assert_eq!(record["model_sha256"], serde_json::json!(sha));
    assert!(out.contains(&sha), "the hash is printed: {out}");
    assert_eq!(record["private_weights"], serde_json::json!(true));
    assert_eq!(record["frac_bits"], serde_json::json!(16));
    assert!(record["created_utc"]
        .as_str()
        .is_some_and(|d| d.ends_with('Z')));
    assert!(
        record["note"]
            .as_str()
            .is_some_and(|n| n.contains("stays with the model owner")),
        "{record}"
    );
    let set_id = record["set_id"].as_str().expect("a set id").to_string();
    assert_eq!(set_id.len(), 32);
    for role in [Role::P0, Role::P1, Role::Helper] {
        let bytes = std::fs::read(dir.join(role.file_name())).expect("a party file");
        assert!(
            !contains(&bytes, sha.as_bytes()),
            "{role:?}'s file holds the hash"
        );
        for n in &names {
            assert!(
                !contains(&bytes, n.as_bytes()),
                "{role:?}'s file holds {n:?}"
            );
        }
        let f = read_file(&bytes, role).expect("reads");
        assert_eq!(f.set_id, set_id);
        for (i, st) in f.plan.steps.iter().enumerate() {
            assert_eq!(st.bound, 0.0);
            assert_eq!(st.node, format!("step{i}"));
        }
        assert_eq!(f.plan.weights.is_empty(), role == Role::Helper);
    }
    let _ = std::fs::remove_dir_all(dir);

    // On request, the servers' files keep the node names; the helper's never has them.
    let (dir, _) = share(
        &m("network_a.onnx"),
        "names",
        &["--keep-node-names", "--public-weights"],
    );
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("set.json")).expect("set.json"))
            .expect("JSON");
    assert_eq!(
        record["node_names_in_server_files"],
        serde_json::json!(true)
    );
    assert_eq!(record["private_weights"], serde_json::json!(false));
    let has_names = |role: Role| {
        let bytes = std::fs::read(dir.join(role.file_name())).expect("a party file");
        let steps: Vec<String> = read_file(&bytes, role)
            .expect("reads")
            .plan
            .steps
            .iter()
            // The input's range step is not an ONNX node.
            .filter(|s| !matches!(s.kind, sotto_model::plan::StepKind::LiftInput { .. }))
            .map(|s| s.node.clone())
            .collect();
        steps
            .iter()
            .all(|s| contains(&bytes, s.as_bytes()) && names.contains(&s.as_str()))
    };
    assert!(has_names(Role::P0) && has_names(Role::P1));
    let helper = std::fs::read(dir.join("helper.sotto")).expect("helper's file");
    assert!(names.iter().all(|n| !contains(&helper, n.as_bytes())));
    let _ = std::fs::remove_dir_all(dir);
}
