//! A federated model as an ONNX file, so the cluster that trained it can
//! serve it (the ONNX backend, the v2 API): the same graph as
//! [`Model::forward`](super::model::Model::forward), input `x` FP32
//! `[batch, inputs]`, output `logits` FP32 `[batch, classes]`.

use crate::onnx::proto::{self, Attr, Dim, Graph, Initializer, Node, ValueInfo};

use super::error::Result;
use super::model::ModelSpec;
use super::params::Params;

/// The operator set the graph is written for.
const OPSET: i64 = 13;

fn node(op: &'static str, inputs: &[&str], output: &str, attrs: Vec<Attr>) -> Node {
    Node {
        op,
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
        outputs: vec![output.to_string()],
        attrs,
    }
}

/// The ONNX model file of `params` (checked against `spec`'s layout).
pub fn to_onnx(spec: &ModelSpec, params: &Params) -> Result<Vec<u8>> {
    spec.validate()?;
    Params::zeros(&spec.layout()).check_layout(params)?;
    let mut g = Graph {
        name: "inferno_fl".into(),
        initializers: params
            .tensors()
            .iter()
            .map(|t| Initializer::Float {
                name: t.name.clone(),
                dims: t.shape.iter().map(|&d| d as i64).collect(),
                data: t.data.clone(),
            })
            .collect(),
        inputs: vec![ValueInfo {
            name: "x".into(),
            dims: vec![Dim::Named("batch".into()), Dim::Fixed(spec.inputs() as i64)],
        }],
        outputs: vec![ValueInfo {
            name: "logits".into(),
            dims: vec![
                Dim::Named("batch".into()),
                Dim::Fixed(spec.classes() as i64),
            ],
        }],
        ..Graph::default()
    };
    let dense = |g: &mut Graph, from: &str, i: usize, relu: bool, out: &str| {
        let w = format!("fc{i}.weight");
        let b = format!("fc{i}.bias");
        let mm = format!("fc{i}.matmul");
        let add = if relu {
            format!("fc{i}.add")
        } else {
            out.to_string()
        };
        g.nodes.push(node("MatMul", &[from, &w], &mm, vec![]));
        g.nodes.push(node("Add", &[&mm, &b], &add, vec![]));
        if relu {
            g.nodes.push(node("Relu", &[&add], out, vec![]));
        }
    };
    match spec {
        ModelSpec::LogisticRegression { .. } | ModelSpec::Mlp { .. } => {
            let layers = params.tensors().len() / 2;
            let mut from = "x".to_string();
            for i in 0..layers {
                let last = i + 1 == layers;
                let out = if last {
                    "logits".to_string()
                } else {
                    format!("h{i}")
                };
                dense(&mut g, &from, i, !last, &out);
                from = out;
            }
        }
        ModelSpec::Cnn { .. } => {
            g.initializers.push(Initializer::Int64 {
                name: "image_shape".into(),
                dims: vec![4],
                data: vec![-1, 1, 28, 28],
            });
            g.nodes
                .push(node("Reshape", &["x", "image_shape"], "image", vec![]));
            let mut from = "image".to_string();
            for i in 0..2 {
                let conv = format!("conv{i}.out");
                let relu = format!("conv{i}.relu");
                let pool = format!("conv{i}.pool");
                g.nodes.push(node(
                    "Conv",
                    &[&from, &format!("conv{i}.weight"), &format!("conv{i}.bias")],
                    &conv,
                    vec![
                        Attr::Ints("kernel_shape", vec![3, 3]),
                        Attr::Ints("pads", vec![1, 1, 1, 1]),
                        Attr::Ints("strides", vec![1, 1]),
                    ],
                ));
                g.nodes.push(node("Relu", &[&conv], &relu, vec![]));
                g.nodes.push(node(
                    "MaxPool",
                    &[&relu],
                    &pool,
                    vec![
                        Attr::Ints("kernel_shape", vec![2, 2]),
                        Attr::Ints("strides", vec![2, 2]),
                    ],
                ));
                from = pool;
            }
            g.nodes.push(node(
                "Flatten",
                &[&from],
                "flat",
                vec![Attr::Int("axis", 1)],
            ));
            dense(&mut g, "flat", 0, false, "logits");
        }
    }
    Ok(proto::model_bytes(&g, OPSET))
}
