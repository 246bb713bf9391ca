//! Hand-computed checks of every aggregation strategy.

use super::*;
use crate::fl::params::NamedTensor;

fn p(values: &[f32]) -> Params {
    Params::new(vec![NamedTensor::new(
        "w",
        vec![values.len()],
        values.to_vec(),
    )
    .unwrap()])
    .unwrap()
}

fn u(values: &[f32], n: usize) -> ClientUpdate {
    ClientUpdate {
        delta: p(values),
        num_samples: n,
    }
}

fn vals(p: &Params) -> Vec<f32> {
    p.values().copied().collect()
}

fn close(a: f32, b: f64) {
    assert!((f64::from(a) - b).abs() < 1e-6, "{a} vs {b}");
}

#[test]
fn fedavg_is_sample_weighted() {
    let agg = fedavg(&[u(&[1.0, 2.0], 1), u(&[3.0, 6.0], 3)]).unwrap();
    assert_eq!(vals(&agg), vec![2.5, 5.0]);
    assert!(fedavg(&[]).is_err());
    assert!(fedavg(&[u(&[1.0], 0)]).is_err());
    assert!(fedavg(&[u(&[1.0], 1), u(&[1.0, 2.0], 1)]).is_err());
}

#[test]
fn median_odd_and_even() {
    let odd = median(&[u(&[1.0, -5.0], 1), u(&[3.0, 0.0], 1), u(&[10.0, 7.0], 100)]).unwrap();
    assert_eq!(vals(&odd), vec![3.0, 0.0]);
    let even = median(&[u(&[1.0], 1), u(&[3.0], 1)]).unwrap();
    assert_eq!(vals(&even), vec![2.0]);
}

#[test]
fn trimmed_mean_drops_extremes() {
    let ups: Vec<_> = [1.0, 2.0, 3.0, 4.0, 100.0]
        .iter()
        .map(|&v| u(&[v], 1))
        .collect();
    assert_eq!(vals(&trimmed_mean(&ups, 0.2).unwrap()), vec![3.0]);
    assert_eq!(vals(&trimmed_mean(&ups, 0.0).unwrap()), vec![22.0]);
    assert!(trimmed_mean(&ups, 0.5).is_err());
}

#[test]
fn krum_and_multi_krum() {
    let ups: Vec<_> = [0.0, 1.0, 2.0, 100.0].iter().map(|&v| u(&[v], 1)).collect();
    // n - f - 2 = 1 nearest neighbour: squared distances 1, 1, 1, 98^2
    assert_eq!(krum_scores(&ups, 1).unwrap(), vec![1.0, 1.0, 1.0, 9604.0]);
    assert_eq!(krum_select(&ups, 1, 1).unwrap(), vec![0]);
    assert_eq!(vals(&multi_krum(&ups, 1, 3).unwrap()), vec![1.0]);
    assert!(krum_scores(&ups, 2).is_err());
    let mut agg = Aggregator::new(Strategy::Krum { f: 1 });
    assert_eq!(vals(&agg.apply(&p(&[5.0]), &ups).unwrap()), vec![5.0]);
}

#[test]
fn fedavgm_accumulates_momentum() {
    let mut agg = Aggregator::new(Strategy::FedAvgM {
        server_lr: 1.0,
        momentum: 0.9,
    });
    let x1 = agg.apply(&p(&[0.0]), &[u(&[1.0], 1)]).unwrap();
    close(vals(&x1)[0], 1.0);
    let x2 = agg.apply(&x1, &[u(&[1.0], 1)]).unwrap();
    close(vals(&x2)[0], 2.9);
    assert_eq!(agg.rounds(), 2);
}

#[test]
fn adaptive_server_optimizers_first_step() {
    let tau = 0.001f64;
    let v0 = tau * tau;
    let cases = [
        (
            Strategy::FedAdam {
                eta: 0.1,
                beta1: 0.9,
                beta2: 0.99,
                tau: 0.001,
            },
            0.1 * 0.1 / ((0.99 * v0 + 0.01).sqrt() + tau),
        ),
        (
            Strategy::FedYogi {
                eta: 0.1,
                beta1: 0.9,
                beta2: 0.99,
                tau: 0.001,
            },
            0.1 * 0.1 / ((v0 + 0.01).sqrt() + tau),
        ),
        (
            Strategy::FedAdagrad {
                eta: 0.1,
                beta1: 0.0,
                tau: 0.001,
            },
            0.1 / ((v0 + 1.0).sqrt() + tau),
        ),
    ];
    for (strategy, expected) in cases {
        let mut agg = Aggregator::new(strategy);
        let x = agg
            .apply(&p(&[0.0]), &[u(&[1.0], 2), u(&[1.0], 5)])
            .unwrap();
        close(vals(&x)[0], expected);
    }
}

#[test]
fn fedadam_second_step_by_hand() {
    let mut agg = Aggregator::new(Strategy::FedAdam {
        eta: 1.0,
        beta1: 0.5,
        beta2: 0.5,
        tau: 0.0,
    });
    let x1 = agg.apply(&p(&[0.0]), &[u(&[2.0], 1)]).unwrap();
    // m = 1, v = 2, x = 1/sqrt(2)
    close(vals(&x1)[0], 1.0 / 2f64.sqrt());
    let x2 = agg.apply(&x1, &[u(&[-2.0], 1)]).unwrap();
    // m = 0.5 - 1 = -0.5, v = 1 + 2 = 3
    close(vals(&x2)[0], 1.0 / 2f64.sqrt() - 0.5 / 3f64.sqrt());
}

#[test]
fn fedprox_and_fedavg_add_the_mean() {
    for s in [
        Strategy::FedAvg,
        Strategy::FedProx { mu: 0.01 },
        Strategy::Median,
    ] {
        let mut agg = Aggregator::new(s);
        let x = agg
            .apply(&p(&[1.0]), &[u(&[2.0], 1), u(&[2.0], 1)])
            .unwrap();
        assert_eq!(vals(&x), vec![3.0]);
    }
}

#[test]
fn strategy_serde() {
    let s: Strategy = serde_json::from_str(r#"{"name":"multi_krum","f":1,"m":3}"#).unwrap();
    assert_eq!(s, Strategy::MultiKrum { f: 1, m: 3 });
    let j = serde_json::to_string(&Strategy::FedAvg).unwrap();
    assert_eq!(j, r#"{"name":"fed_avg"}"#);
    assert_eq!(
        serde_json::from_str::<Strategy>(&j).unwrap(),
        Strategy::FedAvg
    );
}
