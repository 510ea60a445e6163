//! Private prediction of imported models against the plaintext fixed-point twin and the float
//! model, on random inputs.

use prost::Message;
use sotto_core::fixed::{decode_with, FixedPoint};
use sotto_core::local::{run_local, LocalTransport};
use sotto_core::prg::Prg;
use sotto_core::session::{client_receive_output, client_send_input, Dealer, Server};
use sotto_model::onnx::*;
use sotto_model::private::{deal_load, deal_predict, load, predict, share_weights};
use sotto_model::{import, Plan};

fn f32_tensor(name: &str, dims: &[i64], data: &[f32]) -> TensorProto {
    TensorProto {
        dims: dims.to_vec(),
        data_type: Some(data_type::FLOAT),
        name: Some(name.into()),
        float_data: data.to_vec(),
        ..Default::default()
    }
}

fn node(op: &str, inputs: &[&str], output: &str) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        name: Some(format!("{op}_{output}")),
        op_type: Some(op.into()),
        ..Default::default()
    }
}

fn io(name: &str, n: i64) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeTensor {
                elem_type: Some(data_type::FLOAT),
                shape: Some(TensorShapeProto {
                    dim: vec![
                        Dimension {
                            dim_value: None,
                            dim_param: Some("N".into()),
                        },
                        Dimension {
                            dim_value: Some(n),
                            dim_param: None,
                        },
                    ],
                }),
            }),
        }),
    }
}

/// Dense layers of `sizes` with `act` between them (Gemm with bias), random weights.
fn mlp(sizes: &[usize], act: &str, prg: &mut Prg) -> Vec<u8> {
    let mut nodes = Vec::new();
    let mut inits = Vec::new();
    let mut cur = "x".to_string();
    for l in 0..sizes.len() - 1 {
        let (i, o) = (sizes[l], sizes[l + 1]);
        let scale = (2.0 / i as f64).sqrt();
        let w: Vec<f32> = prg
            .vec_u64(i * o)
            .iter()
            .map(|v| (((*v >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * scale) as f32)
            .collect();
        let b: Vec<f32> = prg
            .vec_u64(o)
            .iter()
            .map(|v| ((*v >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2)
            .collect();
        inits.push(f32_tensor(&format!("w{l}"), &[i as i64, o as i64], &w));
        inits.push(f32_tensor(&format!("b{l}"), &[o as i64], &b));
        let out = format!("z{l}");
        nodes.push(node(
            "Gemm",
            &[&cur, &format!("w{l}"), &format!("b{l}")],
            &out,
        ));
        cur = out;
        if l + 2 < sizes.len() {
            let a = format!("a{l}");
            nodes.push(node(act, &[&cur], &a));
            cur = a;
        }
    }
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: None,
            version: Some(13),
        }],
        producer_name: None,
        producer_version: None,
        graph: Some(GraphProto {
            node: nodes,
            name: None,
            initializer: inits,
            input: vec![io("x", sizes[0] as i64)],
            output: vec![io(&cur, *sizes.last().unwrap_or(&1) as i64)],
        }),
    }
    .encode_to_vec()
}

fn m2c(e: sotto_model::ModelError) -> sotto_core::CoreError {
    sotto_core::CoreError::Protocol(e.to_string())
}

fn check(sizes: &[usize], act: &str, private: bool, batch: usize) {
    let mut prg = Prg::from_os().expect("os rng");
    let model = import(&mlp(sizes, act, &mut prg)).expect("imports");
    let fp = FixedPoint::default();
    let plan = Plan::new(&model, fp, 1.0).expect("fits the ring");
    let x: Vec<f32> = prg
        .vec_u64(batch * sizes[0])
        .iter()
        .map(|v| (*v >> 40) as f32 / (1u64 << 24) as f32)
        .collect();
    let x_enc = fp.encode_f32(&x).expect("in range");
    let weights = share_weights(&plan, private).expect("os rng");
    let out_len = batch * plan.output_len;
    let run = run_local(
        |mut d: Dealer<LocalTransport>| {
            let plan = &plan;
            async move {
                let h = deal_load(&mut d, plan, private).await.map_err(m2c)?;
                deal_predict(&mut d, plan, &h, batch).await.map_err(m2c)?;
                sotto_core::protocols::deal_output(&mut d, out_len).await
            }
        },
        |mut s: Server<LocalTransport>| {
            let (plan, weights) = (&plan, &weights);
            async move {
                let w = weights[s.id().index()].clone();
                let m = load(&mut s, plan, w).await.map_err(m2c)?;
                let x = s.receive_input(batch * plan.input_len).await?;
                let y = predict(&mut s, plan, &m, x, batch).await.map_err(m2c)?;
                sotto_core::protocols::output(&mut s, &y, 64).await
            }
        },
        |t: LocalTransport, session| {
            let x_enc = &x_enc;
            async move {
                client_send_input(&t, session, x_enc).await?;
                client_receive_output(&t, session, out_len, 64).await
            }
        },
        false,
    )
    .unwrap_or_else(|e| panic!("private run failed: {e}"));
    let private_out: Vec<f64> = run
        .client
        .iter()
        .map(|v| decode_with(*v, plan.out_frac))
        .collect();
    let twin: Vec<f64> = plan
        .eval_fixed(&x_enc, batch)
        .expect("fits")
        .iter()
        .map(|v| decode_with(*v, plan.out_frac))
        .collect();
    let float = model.forward(&x, batch).expect("fits");
    let cols = plan.output_len;
    for b in 0..batch {
        for j in 0..cols {
            let (pv, tv, fv) = (
                private_out[b * cols + j],
                twin[b * cols + j],
                float[b * cols + j],
            );
            assert!(
                (pv - tv).abs() < 1e-3,
                "{act} private {pv} vs fixed twin {tv}"
            );
            let tol = if act == "Relu" { 1e-2 } else { 5e-2 };
            assert!((pv - fv).abs() < tol, "{act} private {pv} vs float {fv}");
        }
    }
}

#[test]
fn relu_mlp_private_weights_matches_twin_and_float() {
    check(&[20, 16, 16, 4], "Relu", true, 3);
}

#[test]
fn relu_mlp_public_weights_matches_twin_and_float() {
    check(&[20, 16, 4], "Relu", false, 2);
}

#[test]
fn sigmoid_and_tanh_mlps_match() {
    check(&[12, 8, 3], "Sigmoid", true, 2);
    check(&[12, 8, 3], "Tanh", false, 2);
}

#[test]
fn a_model_that_could_overflow_is_refused_naming_the_layer() {
    let mut prg = Prg::from_os().expect("os rng");
    let model = import(&mlp(&[4, 3], "Relu", &mut prg)).expect("imports");
    // A huge declared input range overflows the first layer at 2f = 52 bits.
    let err = Plan::new(&model, FixedPoint::new(26).expect("valid"), 1e6).expect_err("overflows");
    let msg = err.to_string();
    assert!(
        msg.contains("Gemm_z0") && msg.contains("fewer fractional bits"),
        "{msg}"
    );
}

#[test]
fn comparisons_use_the_width_the_budget_allows() {
    let mut prg = Prg::from_os().expect("os rng");
    let model = import(&mlp(&[20, 16, 4], "Relu", &mut prg)).expect("imports");
    let plan = Plan::new(&model, FixedPoint::default(), 1.0).expect("fits");
    let bits: Vec<u32> = plan
        .steps
        .iter()
        .filter_map(|s| match s.kind {
            sotto_model::plan::StepKind::Relu { bits, .. } => Some(bits),
            _ => None,
        })
        .collect();
    assert_eq!(bits.len(), 1);
    assert!(
        bits[0] < 48,
        "ReLU after a 20-input layer on [0, 1] inputs needs few bits, got {}",
        bits[0]
    );
}
