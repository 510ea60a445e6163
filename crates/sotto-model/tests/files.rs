//! Per-party model files: right party, integrity, set membership, what each file leaves out
//! (node names, value bounds, the model's hash), the owner's record, the format version, and
//! a private run from the files equal to the plaintext twin.

use proptest::prelude::*;
use sha2::{Digest, Sha256};
use sotto_core::fixed::FixedPoint;
use sotto_core::share;
use sotto_model::files::{
    check_set, make_set, make_set_with, read_file, ModelSet, PartyFile, Role, SetOptions,
    SET_RECORD_NOTE, VERSION,
};
use sotto_model::private::run_in_process;
use sotto_model::{import, Plan};

const ROLES: [Role; 3] = [Role::P0, Role::P1, Role::Helper];

fn bundled_named(name: &str) -> (Vec<u8>, Plan, sotto_model::Model) {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../models")
        .join(name);
    let bytes = std::fs::read(path).expect("bundled model");
    let model = import(&bytes).expect("imports");
    let plan = Plan::new(&model, FixedPoint::default(), 1.0).expect("fits");
    (bytes, plan, model)
}

fn bundled() -> (Vec<u8>, Plan, sotto_model::Model) {
    bundled_named("network_a.onnx")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

fn read_all(set: &ModelSet) -> [PartyFile; 3] {
    let [a, b, c] = &set.files;
    [
        read_file(a, Role::P0).expect("P0's file"),
        read_file(b, Role::P1).expect("P1's file"),
        read_file(c, Role::Helper).expect("helper's file"),
    ]
}

/// The JSON header of a file (layout: magic, version, role, length, header, ...).
fn header(file: &[u8]) -> serde_json::Value {
    let len = u32::from_le_bytes(file[11..15].try_into().expect("4 bytes")) as usize;
    serde_json::from_slice(&file[15..15 + len]).expect("a JSON header")
}

/// A file with this version, role byte, header and weights, and a valid checksum.
fn assemble(version: u16, role: u8, header: &[u8], weights: &[u8]) -> Vec<u8> {
    let mut b = b"SOTTOMDL".to_vec();
    b.extend_from_slice(&version.to_le_bytes());
    b.push(role);
    b.extend_from_slice(&(header.len() as u32).to_le_bytes());
    b.extend_from_slice(header);
    b.extend_from_slice(weights);
    let sum = Sha256::digest(&b);
    b.extend_from_slice(&sum);
    b
}

/// `file` with its header replaced (weights kept) and the checksum recomputed.
fn with_header(file: &[u8], h: &serde_json::Value) -> Vec<u8> {
    let len = u32::from_le_bytes(file[11..15].try_into().expect("4 bytes")) as usize;
    let weights = &file[15 + len..file.len() - 32];
    let json = serde_json::to_vec(h).expect("serialises");
    assemble(
        u16::from_le_bytes([file[8], file[9]]),
        file[10],
        &json,
        weights,
    )
}

/// x in [0, 1], encoded, for `batch` examples of the plan's input.
fn inputs(plan: &Plan, batch: usize) -> Vec<u64> {
    let x: Vec<f32> = (0..batch * plan.input_len)
        .map(|i| ((i * 37) % 255) as f32 / 255.0)
        .collect();
    plan.fp.encode_f32(&x).expect("pixels")
}

/// A private prediction where each party uses only its own file, compared bit for bit with
/// the plaintext twin of the plan the set was made from.
fn assert_runs_like_the_twin(set: &ModelSet, plan: &Plan, batch: usize) {
    let [p0, p1, h] = read_all(set);
    check_set(&[&p0, &p1, &h]).expect("one set");
    let x = inputs(plan, batch);
    let weights = [
        p0.server_weights().expect("P0"),
        p1.server_weights().expect("P1"),
    ];
    let run = run_in_process(&h.plan, [&p0.plan, &p1.plan], &weights, &x, batch).expect("runs");
    let want = plan.eval_fixed(&x, batch).expect("twin");
    assert_eq!(run.output.len(), batch * plan.output_len);
    assert_eq!(
        run.output, want,
        "the private prediction from the files differs from the plaintext twin"
    );
}

#[test]
fn a_set_round_trips_and_runs_privately() {
    let (bytes, plan, _) = bundled();
    let set = make_set_with(&plan, &bytes, SetOptions::default()).expect("makes files");
    let [p0, p1, h] = read_all(&set);
    check_set(&[&p0, &p1, &h]).expect("one set");
    assert!(
        set.files[2].len() < 4096,
        "the helper's file holds no weights ({} bytes)",
        set.files[2].len()
    );
    // The two shares add up to the plan's weights, and neither equals them.
    for (l, (w, b)) in plan.weights.iter().enumerate() {
        let (w0, b0) = &p0.plan.weights[l];
        let (w1, b1) = &p1.plan.weights[l];
        assert_eq!(&share::reveal(w0, w1).expect("same length"), w);
        assert_eq!(&share::reveal(b0, b1).expect("same length"), b);
        assert_ne!(w0, w);
    }
    // Shares never reach a log through Debug.
    let shown = format!("{:?} {:?} {:?}", p0.plan, p0, set);
    let w0 = p0.plan.weights[0].0[0];
    assert!(
        !shown.contains(&w0.to_string()),
        "Debug printed a weight share"
    );
    assert_runs_like_the_twin(&set, &plan, 2);
}

#[test]
fn sets_of_the_bundled_models_run_bit_for_bit_like_the_twin() {
    for name in ["network_a.onnx", "cnn.onnx"] {
        let (bytes, plan, _) = bundled_named(name);
        for private in [true, false] {
            for keep_node_names in [false, true] {
                let opts = SetOptions {
                    private,
                    keep_node_names,
                };
                let set = make_set_with(&plan, &bytes, opts).expect("makes files");
                assert_runs_like_the_twin(&set, &plan, 2);
            }
        }
    }
}

#[test]
fn files_hold_no_node_names_bounds_or_model_hash() {
    for name in ["network_a.onnx", "cnn.onnx"] {
        let (bytes, plan, model) = bundled_named(name);
        let digest = Sha256::digest(&bytes);
        let sha_hex = hex(&digest);
        let names: Vec<&str> = model.layers.iter().map(|l| l.node.as_str()).collect();
        // The checks below could fail: the plan has the names and real bounds.
        assert!(names.iter().all(|n| n.len() >= 8), "{names:?}");
        assert!(plan.steps.iter().any(|s| s.bound > 0.0));
        for private in [true, false] {
            let opts = SetOptions {
                private,
                keep_node_names: false,
            };
            let set = make_set_with(&plan, &bytes, opts).expect("makes files");
            assert_eq!(set.record.model_sha256, sha_hex);
            for (file, role) in set.files.iter().zip(ROLES) {
                for n in &names {
                    assert!(
                        !contains(file, n.as_bytes()),
                        "{name}: {role:?}'s file holds node name {n:?}"
                    );
                }
                assert!(
                    !contains(file, sha_hex.as_bytes()),
                    "{role:?}'s file holds the model's SHA-256"
                );
                assert!(
                    !contains(file, &digest),
                    "{role:?}'s file holds the model's raw SHA-256"
                );
                assert!(
                    !contains(file, set.record.created_utc.as_bytes()),
                    "{role:?}'s file holds the set's date"
                );
                let h = header(file);
                // Exactly these fields: a new one is a new disclosure to review.
                let keys: Vec<&str> = h
                    .as_object()
                    .expect("an object")
                    .keys()
                    .map(String::as_str)
                    .collect();
                assert_eq!(
                    keys,
                    [
                        "frac_bits",
                        "has_weights",
                        "input_bound",
                        "input_len",
                        "input_shape",
                        "out_frac",
                        "output_len",
                        "private",
                        "role",
                        "set_id",
                        "softmax_at_client",
                        "steps"
                    ],
                    "{role:?}'s header"
                );
            }
            // Public-weight sets carry no input lift (Plan::for_weights).
            let want = plan.clone().for_weights(private);
            for f in read_all(&set) {
                assert_eq!(f.set_id, set.record.set_id);
                assert_eq!(f.plan.steps.len(), want.steps.len());
                for (i, (st, orig)) in f.plan.steps.iter().zip(&want.steps).enumerate() {
                    assert_eq!(st.bound, 0.0, "{:?}'s step {i} has a bound", f.role);
                    assert_eq!(st.node, format!("step{i}"));
                    assert_eq!(st.kind, orig.kind, "the comparison widths stay");
                    assert_eq!(st.per_example, orig.per_example);
                    assert_eq!(st.out_frac, orig.out_frac);
                }
            }
        }
    }
}

#[test]
fn keep_node_names_keeps_them_in_the_servers_files_only() {
    let (bytes, plan, model) = bundled_named("cnn.onnx");
    let opts = SetOptions {
        private: true,
        keep_node_names: true,
    };
    let set = make_set_with(&plan, &bytes, opts).expect("makes files");
    assert!(set.record.node_names_in_server_files);
    let [p0, p1, h] = read_all(&set);
    for f in [&p0, &p1] {
        for (st, orig) in f.plan.steps.iter().zip(&plan.steps) {
            assert_eq!(st.node, orig.node);
            assert_eq!(st.bound, 0.0, "names on request, bounds never");
        }
    }
    let names: Vec<&str> = plan.steps.iter().map(|s| s.node.as_str()).collect();
    for n in &names {
        assert!(contains(&set.files[0], n.as_bytes()), "P0 lacks {n:?}");
        assert!(contains(&set.files[1], n.as_bytes()), "P1 lacks {n:?}");
    }
    for l in &model.layers {
        assert!(
            !contains(&set.files[2], l.node.as_bytes()),
            "the helper's file holds node name {:?}",
            l.node
        );
    }
    assert!(h.plan.steps.iter().all(|s| s.bound == 0.0));
}

#[test]
fn the_helpers_file_holds_only_what_dealing_needs() {
    let (bytes, plan, _) = bundled_named("cnn.onnx");
    for private in [true, false] {
        let opts = SetOptions {
            private,
            keep_node_names: true,
        };
        let set = make_set_with(&plan, &bytes, opts).expect("makes files");
        let [p0, _, h] = read_all(&set);
        assert!(
            h.plan.weights.is_empty(),
            "the helper's file decodes weights"
        );
        let e = h.server_weights().expect_err("no weights");
        assert!(e.to_string().contains("no weights"), "{e}");
        assert_eq!(h.private, private);
        assert_eq!(h.plan.input_bound, 0.0);
        assert_eq!(h.plan.input_shape, vec![plan.input_len]);
        assert!(!h.plan.softmax_at_client);
        assert_eq!(h.plan.input_len, plan.input_len);
        assert_eq!(h.plan.output_len, plan.output_len);
        assert_eq!(h.plan.out_frac, plan.out_frac);
        assert_eq!(h.plan.fp, plan.fp);
        assert_eq!(h.plan.weight_lens(), plan.weight_lens());
        // The servers keep what clients are told (the manifest).
        assert_eq!(p0.plan.input_bound, plan.input_bound);
        assert_eq!(p0.plan.input_shape, plan.input_shape);
        assert_eq!(p0.plan.softmax_at_client, plan.softmax_at_client);
        let head = header(&set.files[2]);
        assert_eq!(head["has_weights"], serde_json::json!(false));
        let hlen = u32::from_le_bytes(set.files[2][11..15].try_into().expect("4 bytes"));
        assert_eq!(
            set.files[2].len(),
            15 + hlen as usize + 32,
            "nothing but the header in the helper's file"
        );
    }
}

#[test]
fn the_owners_record_names_the_model_and_the_set() {
    let (bytes, plan, _) = bundled();
    let set = make_set_with(&plan, &bytes, SetOptions::default()).expect("makes files");
    let r = &set.record;
    assert_eq!(r.model_sha256, hex(&Sha256::digest(&bytes)));
    assert_eq!(r.frac_bits, 16);
    assert!(r.private_weights);
    assert!(!r.node_names_in_server_files);
    assert_eq!(r.file_version, VERSION);
    assert_eq!(r.note, SET_RECORD_NOTE);
    assert!(r.note.contains("stays with the model owner"));
    assert_eq!(r.set_id.len(), 32);
    assert!(r.created_utc.ends_with('Z') && r.created_utc.starts_with("20"));
    let json: serde_json::Value = serde_json::from_str(&r.to_json().expect("json")).unwrap();
    assert_eq!(json["model_sha256"], serde_json::json!(r.model_sha256));
    assert_eq!(json["set_id"], serde_json::json!(r.set_id));
    for f in read_all(&set) {
        assert_eq!(f.set_id, r.set_id);
    }
    let other = make_set_with(&plan, &bytes, SetOptions::default()).expect("again");
    assert_ne!(other.record.set_id, r.set_id, "set ids are random");
}

#[test]
fn older_files_are_refused_with_the_remedy() {
    let (bytes, plan, _) = bundled();
    let [f0, _, fh] = make_set(&plan, &bytes, true).expect("makes files");
    assert_eq!(u16::from_le_bytes([f0[8], f0[9]]), VERSION);
    for (file, role) in [(&f0, Role::P0), (&fh, Role::Helper)] {
        // A version-1 file: same layout, its header carried the model's hash; a version-2
        // file's plan had no input lift.
        for (old, why) in [(1u16, "model's hash"), (2, "input bound")] {
            let mut h = header(file);
            h["model_sha256"] = serde_json::json!(hex(&Sha256::digest(&bytes)));
            let mut v = with_header(file, &h);
            v[8..10].copy_from_slice(&old.to_le_bytes());
            let n = v.len() - 32;
            let sum = Sha256::digest(&v[..n]);
            v[n..].copy_from_slice(&sum);
            let e = read_file(&v, role).expect_err("an older file");
            let msg = e.to_string();
            assert!(msg.contains(&format!("version {old}")), "{msg}");
            assert!(msg.contains(why), "{msg}");
            assert!(msg.contains("sotto share-model"), "{msg}");
        }
    }
    let mut v3 = f0.clone();
    v3[8..10].copy_from_slice(&(VERSION + 1).to_le_bytes());
    let n = v3.len() - 32;
    let sum = Sha256::digest(&v3[..n]);
    v3[n..].copy_from_slice(&sum);
    let e = read_file(&v3, Role::P0).expect_err("a newer file");
    assert!(e.to_string().contains("newer"), "{e}");
}

#[test]
fn wrong_party_corruption_and_mixed_sets_are_refused() {
    let (bytes, plan, _) = bundled();
    let [f0, f1, fh] = make_set(&plan, &bytes, true).expect("makes files");
    let e = read_file(&f0, Role::P1).expect_err("P0's file for P1");
    assert!(e.to_string().contains("for P0, not for P1"), "{e}");
    assert!(read_file(&fh, Role::P0).is_err());
    let mut bad = f1.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 1;
    let e = read_file(&bad, Role::P1).expect_err("corrupted");
    assert!(e.to_string().contains("corrupted"), "{e}");
    assert!(read_file(&f1[..f1.len() - 1], Role::P1).is_err());
    assert!(read_file(b"SOTTOMDL", Role::P1).is_err());
    assert!(
        read_file(&bytes, Role::P0).is_err(),
        "an ONNX file is not a party file"
    );
    let [g0, ..] = make_set(&plan, &bytes, true).expect("another set");
    let p1 = read_file(&f1, Role::P1).expect("valid");
    let q0 = read_file(&g0, Role::P0).expect("valid");
    let e = check_set(&[&q0, &p1]).expect_err("two sets");
    assert!(e.to_string().contains("different sets"), "{e}");
}

#[test]
fn crafted_headers_with_valid_checksums_are_refused() {
    let (bytes, plan, _) = bundled_named("cnn.onnx");
    let [f0, _, fh] = make_set(&plan, &bytes, true).expect("makes files");
    let steps = header(&fh)["steps"].as_array().expect("steps").clone();
    let find = |kind: &str| {
        steps
            .iter()
            .position(|s| s["kind"].get(kind).is_some())
            .unwrap_or_else(|| panic!("a {kind} step"))
    };
    let (conv, dense, transpose) = (find("Conv"), find("Dense"), find("Transpose"));
    type Change = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Change)> = vec![
        (
            "weight count",
            Box::new(move |h| {
                h["steps"][dense]["kind"]["Dense"]["inputs"] = serde_json::json!(usize::MAX)
            }),
        ),
        (
            "weight count",
            Box::new(move |h| {
                h["steps"][conv]["kind"]["Conv"]["params"]["out_channels"] =
                    serde_json::json!(usize::MAX / 2)
            }),
        ),
        (
            "weight tensor",
            Box::new(move |h| h["steps"][dense]["kind"]["Dense"]["dense"] = serde_json::json!(7)),
        ),
        (
            "permutation",
            Box::new(move |h| {
                h["steps"][transpose]["kind"]["Transpose"]["rank"] = serde_json::json!(40)
            }),
        ),
        (
            "permutation",
            Box::new(move |h| {
                h["steps"][transpose]["kind"]["Transpose"]["perm"][1] = serde_json::json!(0)
            }),
        ),
        (
            "input shape",
            Box::new(|h| h["input_shape"] = serde_json::json!([usize::MAX, 4])),
        ),
        (
            "holds weights",
            Box::new(|h| h["has_weights"] = serde_json::json!(true)),
        ),
        (
            "header",
            Box::new(|h| h["frac_bits"] = serde_json::json!(70)),
        ),
    ];
    for (want, change) in &cases {
        let mut h = header(&fh);
        change(&mut h);
        let e = read_file(&with_header(&fh, &h), Role::Helper).expect_err(want);
        assert!(e.to_string().contains(want), "{want}: {e}");
    }
    // A server's file whose header asks for more weights than it holds.
    let mut h = header(&f0);
    h["steps"][dense]["kind"]["Dense"]["outputs"] = serde_json::json!(1usize << 40);
    assert!(read_file(&with_header(&f0, &h), Role::P0).is_err());
    for v in [0.0, -1.0] {
        let mut h = header(&f0);
        h["input_bound"] = serde_json::json!(v);
        let e = read_file(&with_header(&f0, &h), Role::P0).expect_err("no input bound");
        assert!(e.to_string().contains("input bound"), "{e}");
    }
    let mut h = header(&f0);
    h["has_weights"] = serde_json::json!(false);
    let e = read_file(&with_header(&f0, &h), Role::P0).expect_err("no weights");
    assert!(e.to_string().contains("without weights"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn reading_never_panics_on_any_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..600),
        magic in any::<bool>(),
    ) {
        let mut b = bytes;
        if magic {
            let mut m = b"SOTTOMDL".to_vec();
            m.extend_from_slice(&b);
            b = m;
        }
        for role in ROLES {
            let _ = read_file(&b, role);
        }
    }

    #[test]
    fn reading_never_panics_on_altered_files_with_valid_checksums(
        at in any::<proptest::sample::Index>(),
        byte in any::<u8>(),
        cut in any::<proptest::sample::Index>(),
    ) {
        static FILES: std::sync::OnceLock<[Vec<u8>; 3]> = std::sync::OnceLock::new();
        let files = FILES.get_or_init(|| {
            let (bytes, plan, _) = bundled_named("cnn.onnx");
            make_set(&plan, &bytes, true).expect("makes files")
        });
        for (file, role) in files.iter().zip(ROLES) {
            let len = u32::from_le_bytes(file[11..15].try_into().expect("4 bytes")) as usize;
            let body = &file[..file.len() - 32];
            // Change one byte of the prefix or the header, or cut the body short; fix the sum.
            let mut b = body.to_vec();
            b[at.index(15 + len)] = byte;
            let mut short = body[..cut.index(body.len())].to_vec();
            for v in [&mut b, &mut short] {
                let sum = Sha256::digest(&v[..]);
                v.extend_from_slice(&sum);
                let _ = read_file(v, role);
            }
        }
    }
}
