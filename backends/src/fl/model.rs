//! Small models for federated learning, named by a [`ModelSpec`], built on
//! candle (f32, CPU). Dense weights are stored `[inputs, outputs]` (forward
//! `x @ W + b`), the layout of the anchor's `init_params.bin`.

use candle_core::{Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::error::{FlError, Result};
use super::params::{Layout, NamedTensor, Params};

/// Which model to train; serializable as part of a job spec, e.g.
/// `{"kind":"mlp","layers":[784,200,10]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ModelSpec {
    /// Multinomial logistic regression: one dense layer.
    LogisticRegression {
        /// Input features.
        inputs: usize,
        /// Output classes.
        classes: usize,
    },
    /// Dense layers with ReLU between them; `layers[0]` inputs, last = classes.
    Mlp {
        /// Layer widths, at least two.
        layers: Vec<usize>,
    },
    /// For 28x28x1 images (fed as 784 features): conv3x3(1→8, pad 1)-ReLU-maxpool2,
    /// conv3x3(8→16, pad 1)-ReLU-maxpool2, dense 784→classes.
    Cnn {
        /// Output classes.
        classes: usize,
    },
}

/// Channels of the two CNN convolutions.
const CNN_C1: usize = 8;
const CNN_C2: usize = 16;

impl ModelSpec {
    /// The MLP of the Flower anchor: 784-200-10.
    pub fn anchor_mlp() -> Self {
        ModelSpec::Mlp {
            layers: vec![784, 200, 10],
        }
    }

    /// Number of input features the model expects.
    pub fn inputs(&self) -> usize {
        match self {
            ModelSpec::LogisticRegression { inputs, .. } => *inputs,
            ModelSpec::Mlp { layers } => layers.first().copied().unwrap_or(0),
            ModelSpec::Cnn { .. } => 784,
        }
    }

    /// Number of output classes.
    pub fn classes(&self) -> usize {
        match self {
            ModelSpec::LogisticRegression { classes, .. } | ModelSpec::Cnn { classes } => *classes,
            ModelSpec::Mlp { layers } => layers.last().copied().unwrap_or(0),
        }
    }

    /// Errors on degenerate specs (fewer than two MLP layers, zero widths).
    pub fn validate(&self) -> Result<()> {
        let ok = match self {
            ModelSpec::LogisticRegression { inputs, classes } => *inputs > 0 && *classes > 0,
            ModelSpec::Mlp { layers } => layers.len() >= 2 && layers.iter().all(|&w| w > 0),
            ModelSpec::Cnn { classes } => *classes > 0,
        };
        if ok {
            Ok(())
        } else {
            Err(FlError::InvalidConfig(format!(
                "degenerate model spec {self:?}"
            )))
        }
    }

    /// Tensor names and shapes, in the order of [`Params`].
    /// Dense layer `i`: `fc{i}.weight [in, out]`, `fc{i}.bias [out]`.
    pub fn layout(&self) -> Layout {
        let dense = |layers: &[usize]| -> Layout {
            let mut l = Vec::new();
            for (i, w) in layers.windows(2).enumerate() {
                l.push((format!("fc{i}.weight"), vec![w[0], w[1]]));
                l.push((format!("fc{i}.bias"), vec![w[1]]));
            }
            l
        };
        match self {
            ModelSpec::LogisticRegression { inputs, classes } => dense(&[*inputs, *classes]),
            ModelSpec::Mlp { layers } => dense(layers),
            ModelSpec::Cnn { classes } => vec![
                ("conv0.weight".into(), vec![CNN_C1, 1, 3, 3]),
                ("conv0.bias".into(), vec![CNN_C1]),
                ("conv1.weight".into(), vec![CNN_C2, CNN_C1, 3, 3]),
                ("conv1.bias".into(), vec![CNN_C2]),
                ("fc0.weight".into(), vec![CNN_C2 * 7 * 7, *classes]),
                ("fc0.bias".into(), vec![*classes]),
            ],
        }
    }

    /// Deterministic initial parameters: every tensor uniform in
    /// `±1/sqrt(fan_in)` (PyTorch's default), from a ChaCha8 stream seeded by `seed`.
    pub fn init(&self, seed: u64) -> Result<Params> {
        self.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let layout = self.layout();
        let mut tensors = Vec::with_capacity(layout.len());
        for (i, (name, shape)) in layout.iter().enumerate() {
            // fan_in comes from the weight of the pair (weight, bias).
            let weight_shape = &layout[i - i % 2].1;
            let fan_in = if weight_shape.len() == 4 {
                weight_shape[1..].iter().product::<usize>()
            } else {
                weight_shape[0]
            };
            let bound = 1.0 / (fan_in as f32).sqrt();
            let n = shape.iter().product();
            let data = (0..n).map(|_| rng.gen_range(-bound..bound)).collect();
            tensors.push(NamedTensor::new(name.clone(), shape.clone(), data)?);
        }
        Params::new(tensors)
    }
}

/// A model instance: its spec and one trainable candle variable per tensor.
pub struct Model {
    spec: ModelSpec,
    names: Vec<String>,
    vars: Vec<Var>,
}

impl Model {
    /// Builds a model from parameters, which must match the spec's layout.
    pub fn from_params(spec: &ModelSpec, params: &Params) -> Result<Model> {
        spec.validate()?;
        let expected = Params::zeros(&spec.layout());
        expected.check_layout(params)?;
        let mut vars = Vec::with_capacity(params.tensors().len());
        for t in params.tensors() {
            let tensor = Tensor::from_slice(&t.data, t.shape.as_slice(), &Device::Cpu)?;
            vars.push(Var::from_tensor(&tensor)?);
        }
        Ok(Model {
            spec: spec.clone(),
            names: params.tensors().iter().map(|t| t.name.clone()).collect(),
            vars,
        })
    }

    /// Builds a model with [`ModelSpec::init`] parameters.
    pub fn from_seed(spec: &ModelSpec, seed: u64) -> Result<Model> {
        Model::from_params(spec, &spec.init(seed)?)
    }

    /// The spec this model was built from.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// The trainable variables, in [`Params`] order.
    pub fn vars(&self) -> &[Var] {
        &self.vars
    }

    /// Copies the current values out.
    pub fn to_params(&self) -> Result<Params> {
        let mut tensors = Vec::with_capacity(self.vars.len());
        for (name, var) in self.names.iter().zip(&self.vars) {
            let t = var.as_tensor();
            let data = t.flatten_all()?.to_vec1::<f32>()?;
            tensors.push(NamedTensor::new(name.clone(), t.dims().to_vec(), data)?);
        }
        Params::new(tensors)
    }

    /// Logits `[n, classes]` for features `[n, inputs]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let v = |i: usize| self.vars[i].as_tensor();
        match &self.spec {
            ModelSpec::LogisticRegression { .. } | ModelSpec::Mlp { .. } => {
                let layers = self.vars.len() / 2;
                let mut h = x.clone();
                for i in 0..layers {
                    h = h.matmul(v(2 * i))?.broadcast_add(v(2 * i + 1))?;
                    if i + 1 < layers {
                        h = h.relu()?;
                    }
                }
                Ok(h)
            }
            ModelSpec::Cnn { .. } => {
                let n = x.dim(0)?;
                let img = x.reshape((n, 1, 28, 28))?;
                let conv = |h: &Tensor, w: &Tensor, b: &Tensor| -> candle_core::Result<Tensor> {
                    let c = b.dim(0)?;
                    h.conv2d(w, 1, 1, 1, 1)?
                        .broadcast_add(&b.reshape((1, c, 1, 1))?)?
                        .relu()?
                        .max_pool2d(2)
                };
                let h = conv(&img, v(0), v(1))?;
                let h = conv(&h, v(2), v(3))?;
                let h = h.flatten_from(1)?;
                Ok(h.matmul(v(4))?.broadcast_add(v(5))?)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_and_init() {
        let spec = ModelSpec::anchor_mlp();
        let p = spec.init(7).unwrap();
        assert_eq!(p.num_values(), 159_010);
        assert_eq!(p, spec.init(7).unwrap());
        assert_ne!(p, spec.init(8).unwrap());
        let bound = 1.0 / 784f32.sqrt();
        assert!(p.tensors()[0].data.iter().all(|v| v.abs() <= bound));
        assert!(ModelSpec::Mlp { layers: vec![3] }.validate().is_err());
    }

    #[test]
    fn forward_shapes_and_roundtrip() {
        let x = Tensor::ones((3, 784), candle_core::DType::F32, &Device::Cpu).unwrap();
        for spec in [
            ModelSpec::LogisticRegression {
                inputs: 784,
                classes: 10,
            },
            ModelSpec::anchor_mlp(),
            ModelSpec::Cnn { classes: 10 },
        ] {
            let p = spec.init(1).unwrap();
            let m = Model::from_params(&spec, &p).unwrap();
            assert_eq!(m.forward(&x).unwrap().dims(), &[3, 10]);
            assert_eq!(m.to_params().unwrap(), p);
        }
    }

    #[test]
    fn mlp_forward_matches_by_hand() {
        let spec = ModelSpec::Mlp {
            layers: vec![2, 2, 1],
        };
        let p = Params::new(vec![
            NamedTensor::new("fc0.weight", vec![2, 2], vec![1.0, -1.0, 2.0, 1.0]).unwrap(),
            NamedTensor::new("fc0.bias", vec![2], vec![0.0, -10.0]).unwrap(),
            NamedTensor::new("fc1.weight", vec![2, 1], vec![1.0, 1.0]).unwrap(),
            NamedTensor::new("fc1.bias", vec![1], vec![0.5]).unwrap(),
        ])
        .unwrap();
        let m = Model::from_params(&spec, &p).unwrap();
        let x = Tensor::from_slice(&[1.0f32, 1.0], (1, 2), &Device::Cpu).unwrap();
        // h = relu([1+2, -1+1-10]) = [3, 0]; y = 3 + 0.5
        let y = m
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(y, vec![3.5]);
    }
}
