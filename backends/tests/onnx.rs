//! The ONNX backend with the real ONNX Runtime library (`inferno pull
//! onnxruntime`) on a model written by the PyPI `onnx` package.

use std::time::Duration;

use backends::onnx::{BatchPolicy, OnnxError, OnnxModel, OnnxServer, Refused};
use inferno_cluster_tests::{onnx_runtime, onnx_test_model};
use protocol::tensor::{DType, NamedTensor, TensorData};

/// What the test model computes: Relu(x W + b) with W[i][j] = (i - j) / 4
/// and b[j] = j / 10 - 0.1.
fn expected(x: &[f32]) -> Vec<f32> {
    x.chunks(4)
        .flat_map(|row| {
            (0..3).map(move |j| {
                let z: f32 = row
                    .iter()
                    .enumerate()
                    .map(|(i, v)| v * (i as f32 - j as f32) / 4.0)
                    .sum::<f32>()
                    + (j as f32 / 10.0 - 0.1);
                z.max(0.0)
            })
        })
        .collect()
}

fn x(rows: usize, seed: f32) -> NamedTensor {
    NamedTensor {
        name: "x".into(),
        shape: vec![rows as i64, 4],
        data: TensorData::Fp32((0..rows * 4).map(|i| seed + i as f32 * 0.25).collect()),
    }
}

fn load(dir: &tempfile::TempDir) -> OnnxModel {
    OnnxModel::load(&onnx_runtime(), &onnx_test_model(dir.path()), 1).expect("load the test model")
}

fn assert_close(got: &TensorData, want: &[f32]) {
    let TensorData::Fp32(got) = got else {
        panic!("expected FP32, got {got:?}");
    };
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-5, "{got:?} != {want:?}");
    }
}

#[test]
fn a_model_reports_its_declared_signature_and_computes_its_graph() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = load(&dir);
    let sig = model.signature().clone();
    assert_eq!(sig.inputs.len(), 1);
    assert_eq!(sig.inputs[0].name, "x");
    assert_eq!(sig.inputs[0].dtype, Some(DType::Fp32));
    assert_eq!(sig.inputs[0].dims, vec![-1, 4]);
    assert_eq!(sig.outputs[0].name, "y");
    assert_eq!(sig.outputs[0].dims, vec![-1, 3]);
    assert!(sig.batchable());

    let input = x(3, -1.0);
    let out = model.run(std::slice::from_ref(&input)).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].name, "y");
    assert_eq!(out[0].shape, vec![3, 3]);
    let TensorData::Fp32(xs) = &input.data else {
        unreachable!()
    };
    assert_close(&out[0].data, &expected(xs));
}

#[test]
fn inputs_that_do_not_fit_are_refused_naming_the_input() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = load(&dir);
    let wrong_dim = NamedTensor {
        shape: vec![2, 5],
        data: TensorData::Fp32(vec![0.0; 10]),
        ..x(2, 0.0)
    };
    let wrong_type = NamedTensor {
        data: TensorData::Int64(vec![0; 8]),
        ..x(2, 0.0)
    };
    let wrong_name = NamedTensor {
        name: "input".into(),
        ..x(2, 0.0)
    };
    for (bad, says) in [
        (vec![wrong_dim], "dimension 1"),
        (vec![wrong_type], "INT64"),
        (vec![wrong_name], "'input'"),
        (vec![], "'x' is missing"),
    ] {
        match model.run(&bad) {
            Err(OnnxError::Input(e)) => assert!(e.to_string().contains(says), "{e}"),
            other => panic!("{bad:?} gave {other:?}"),
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn concurrent_requests_share_runs_and_each_gets_its_own_rows() {
    let dir = tempfile::tempdir().unwrap();
    let policy = BatchPolicy {
        max_batch_size: 64,
        max_queue_delay: Duration::from_millis(20),
        max_queue: 64,
    };
    let server = std::sync::Arc::new(OnnxServer::start(load(&dir), policy, |_| {}).unwrap());
    let answers = runtime().block_on(async {
        let tasks: Vec<_> = (0..32)
            .map(|i| {
                let server = server.clone();
                tokio::spawn(async move {
                    let input = x(1 + i % 3, i as f32);
                    let out = server.infer(vec![input.clone()]).await;
                    (input, out)
                })
            })
            .collect();
        let mut answers = Vec::new();
        for t in tasks {
            answers.push(t.await.unwrap());
        }
        answers
    });
    for (input, out) in answers {
        let out = out.expect("answer");
        let TensorData::Fp32(xs) = &input.data else {
            unreachable!()
        };
        assert_eq!(out[0].shape, vec![input.shape[0], 3]);
        assert_close(&out[0].data, &expected(xs));
    }
    let stats = server.stats();
    assert_eq!(stats.requests, 32);
    assert!(
        stats.runs <= 8,
        "32 requests within the 20 ms delay should share runs, took {} runs",
        stats.runs
    );
}

#[test]
fn a_full_queue_refuses_at_once_and_a_withdrawn_request_is_never_run() {
    let dir = tempfile::tempdir().unwrap();
    let policy = BatchPolicy {
        max_batch_size: 64,
        max_queue_delay: Duration::from_millis(400),
        max_queue: 2,
    };
    let server = std::sync::Arc::new(OnnxServer::start(load(&dir), policy, |_| {}).unwrap());
    runtime().block_on(async {
        // A caller that gives up before the delay runs out leaves the queue.
        let gone =
            tokio::time::timeout(Duration::from_millis(50), server.infer(vec![x(1, 0.0)])).await;
        assert!(gone.is_err(), "the request should still be waiting");

        let a = tokio::spawn({
            let server = server.clone();
            async move { server.infer(vec![x(1, 1.0)]).await }
        });
        let b = tokio::spawn({
            let server = server.clone();
            async move { server.infer(vec![x(1, 2.0)]).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = std::time::Instant::now();
        match server.infer(vec![x(1, 3.0)]).await {
            Err(OnnxError::Refused(Refused::QueueFull(2))) => {}
            other => panic!("a third request should be refused, got {other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "refused at once"
        );
        let too_big = server.infer(vec![x(65, 0.0)]).await;
        assert!(
            matches!(
                too_big,
                Err(OnnxError::Refused(Refused::TooManyRows {
                    rows: 65,
                    max: 64
                }))
            ),
            "{too_big:?}"
        );
        a.await.unwrap().expect("a");
        b.await.unwrap().expect("b");
    });
    let stats = server.stats();
    assert_eq!(stats.requests, 2, "the withdrawn request never ran");
}

#[test]
fn federated_models_exported_as_onnx_pass_the_checker_and_compute_what_training_computes() {
    use backends::fl::model::{Model, ModelSpec};
    use backends::fl::onnx_export::to_onnx;
    use candle_core::{Device, Tensor};

    let dir = tempfile::tempdir().unwrap();
    let specs = [
        ModelSpec::LogisticRegression {
            inputs: 784,
            classes: 10,
        },
        ModelSpec::anchor_mlp(),
        ModelSpec::Mlp {
            layers: vec![784, 64, 32, 10],
        },
        ModelSpec::Cnn { classes: 10 },
    ];
    for (k, spec) in specs.iter().enumerate() {
        let params = spec.init(3 + k as u64).unwrap();
        let path = dir.path().join(format!("fl{k}.onnx"));
        std::fs::write(&path, to_onnx(spec, &params).unwrap()).unwrap();
        let check = std::process::Command::new("python3")
            .args([
                "-c",
                "import onnx, sys; onnx.checker.check_model(onnx.load(sys.argv[1]), full_check=True)",
            ])
            .arg(&path)
            .output()
            .expect("run python3");
        assert!(
            check.status.success(),
            "{spec:?}: the onnx checker refused the file (pip install onnx?): {}",
            String::from_utf8_lossy(&check.stderr)
        );

        let rows = 5;
        let x: Vec<f32> = (0..rows * 784)
            .map(|i| ((i * 37) % 101) as f32 / 101.0)
            .collect();
        let want = Model::from_params(spec, &params)
            .unwrap()
            .forward(&Tensor::from_slice(&x, (rows, 784), &Device::Cpu).unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let mut model = OnnxModel::load(&onnx_runtime(), &path, 1).unwrap();
        assert_eq!(model.signature().inputs[0].dims, vec![-1, 784]);
        let out = model
            .run(&[NamedTensor {
                name: "x".into(),
                shape: vec![rows as i64, 784],
                data: TensorData::Fp32(x),
            }])
            .unwrap();
        assert_eq!(out[0].name, "logits");
        assert_eq!(out[0].shape, vec![rows as i64, 10]);
        let TensorData::Fp32(got) = &out[0].data else {
            panic!("{out:?}")
        };
        let worst = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (g - w).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-4, "{spec:?}: ONNX and candle differ by {worst}");
    }
}
