//! Local training on a tiny synthetic problem.

use super::*;

/// Two Gaussian-ish blobs in 4 features, labels 0/1, deterministic.
fn blobs(n: usize) -> Dataset {
    let mut features = Vec::new();
    let mut labels = Vec::new();
    for i in 0..n {
        let c = (i % 2) as u32;
        let s = if c == 0 { -1.0 } else { 1.0 };
        let j = (i as f32 * 0.37).sin() * 0.5;
        features.extend([s + j, s - j, 0.5 * s + j, j]);
        labels.push(c);
    }
    Dataset::new(features, labels, 4).unwrap()
}

fn spec() -> ModelSpec {
    ModelSpec::Mlp {
        layers: vec![4, 8, 2],
    }
}

#[test]
fn every_optimizer_learns_and_is_deterministic() {
    let data = blobs(200);
    let global = spec().init(3).unwrap();
    let before = evaluate(&spec(), &global, &data).unwrap();
    for optimizer in [
        OptimizerConfig::Sgd { lr: 0.1 },
        OptimizerConfig::Momentum {
            lr: 0.05,
            momentum: 0.9,
        },
        OptimizerConfig::Adam {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        },
    ] {
        let cfg = TrainConfig {
            optimizer,
            batch_size: 16,
            local_epochs: 3,
            proximal_mu: 0.0,
            seed: 11,
            threads: 1,
        };
        let u = train_local(&spec(), &global, &data, &cfg).unwrap();
        assert_eq!(u.num_samples, 200);
        let after = evaluate(&spec(), &global.add(&u.delta).unwrap(), &data).unwrap();
        assert!(
            after.loss < before.loss,
            "{cfg:?}: {} -> {}",
            before.loss,
            after.loss
        );
        assert!(after.accuracy > 0.95, "{cfg:?}: {}", after.accuracy);
        assert_eq!(u, train_local(&spec(), &global, &data, &cfg).unwrap());
        let other = TrainConfig {
            seed: 12,
            ..cfg.clone()
        };
        assert_ne!(
            u.delta,
            train_local(&spec(), &global, &data, &other).unwrap().delta
        );
    }
}

#[test]
fn proximal_term_shrinks_the_update() {
    let data = blobs(200);
    let global = spec().init(3).unwrap();
    let cfg = TrainConfig {
        optimizer: OptimizerConfig::Sgd { lr: 0.1 },
        batch_size: 8,
        local_epochs: 5,
        proximal_mu: 0.0,
        seed: 1,
        threads: 1,
    };
    let free = train_local(&spec(), &global, &data, &cfg).unwrap();
    let prox = train_local(
        &spec(),
        &global,
        &data,
        &TrainConfig {
            proximal_mu: 5.0,
            ..cfg
        },
    )
    .unwrap();
    assert!(
        prox.delta.l2_norm() < 0.8 * free.delta.l2_norm(),
        "{} vs {}",
        prox.delta.l2_norm(),
        free.delta.l2_norm()
    );
}

#[test]
fn one_sgd_step_matches_by_hand() {
    // Logistic regression, 1 feature, 2 classes, one sample x=1 label 0, zero init:
    // p = [0.5, 0.5]; dL/dz = p - onehot = [-0.5, 0.5]; dW = x * dz; db = dz.
    let spec = ModelSpec::LogisticRegression {
        inputs: 1,
        classes: 2,
    };
    let data = Dataset::new(vec![1.0], vec![0], 1).unwrap();
    let global = Params::zeros(&spec.layout());
    let cfg = TrainConfig {
        optimizer: OptimizerConfig::Sgd { lr: 0.1 },
        batch_size: 1,
        local_epochs: 1,
        proximal_mu: 0.0,
        seed: 0,
        threads: 1,
    };
    let u = train_local(&spec, &global, &data, &cfg).unwrap();
    let d: Vec<f32> = u.delta.values().copied().collect();
    for (a, b) in d.iter().zip([0.05f32, -0.05, 0.05, -0.05]) {
        assert!((a - b).abs() < 1e-6, "{d:?}");
    }
    assert!((u.loss - 2f64.ln()).abs() < 1e-6);
}

#[test]
fn bad_inputs_are_errors() {
    let data = blobs(10);
    let global = spec().init(0).unwrap();
    let cfg = TrainConfig {
        batch_size: 0,
        ..TrainConfig::default()
    };
    assert!(train_local(&spec(), &global, &data, &cfg).is_err());
    let wrong = ModelSpec::anchor_mlp();
    assert!(train_local(
        &wrong,
        &wrong.init(0).unwrap(),
        &data,
        &TrainConfig::default()
    )
    .is_err());
    assert!(Model::from_params(&wrong, &global).is_err());
    let bad_labels = Dataset::new(vec![0.0; 4], vec![5], 4).unwrap();
    assert!(evaluate(&spec(), &global, &bad_labels).is_err());
}

#[test]
fn cnn_trains_through_conv_and_pool() {
    // 28x28 images: class 0 bright top half, class 1 bright bottom half.
    let n = 64;
    let mut features = Vec::with_capacity(n * 784);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let c = (i % 2) as u32;
        for p in 0..784 {
            let top = p < 392;
            let on = (c == 0) == top;
            let noise = ((i * 31 + p * 7) % 13) as f32 / 26.0;
            features.push(if on { 0.5 + noise } else { noise });
        }
        labels.push(c);
    }
    let data = Dataset::new(features, labels, 784).unwrap();
    let spec = ModelSpec::Cnn { classes: 2 };
    let global = spec.init(5).unwrap();
    let before = evaluate(&spec, &global, &data).unwrap();
    let cfg = TrainConfig {
        optimizer: OptimizerConfig::Sgd { lr: 0.1 },
        batch_size: 16,
        local_epochs: 3,
        proximal_mu: 0.0,
        seed: 2,
        threads: 1,
    };
    let u = train_local(&spec, &global, &data, &cfg).unwrap();
    let after = evaluate(&spec, &global.add(&u.delta).unwrap(), &data).unwrap();
    assert!(
        after.loss < before.loss,
        "{} -> {}",
        before.loss,
        after.loss
    );
    // every tensor, convolutions included, received a gradient
    assert!(u
        .delta
        .tensors()
        .iter()
        .all(|t| t.data.iter().any(|&v| v != 0.0)));
}
