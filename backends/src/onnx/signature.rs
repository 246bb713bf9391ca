//! The check of a request's tensors against what the model declares it
//! takes ([`Signature`]): every refusal names the input at fault.

use protocol::tensor::{element_count, DType, NamedTensor, Signature, TensorSpec};

/// Why a request's tensors do not fit the model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// A declared input was not given.
    #[error("input '{name}' is missing")]
    Missing {
        /// The input.
        name: String,
    },
    /// A tensor was given that the model does not declare.
    #[error("input '{name}' is not an input of this model (it takes {expected})")]
    Unknown {
        /// The name given.
        name: String,
        /// The model's input names, comma-separated.
        expected: String,
    },
    /// The same input was given twice.
    #[error("input '{name}' is given more than once")]
    Duplicate {
        /// The input.
        name: String,
    },
    /// The element type differs from the declared one.
    #[error("input '{name}' has datatype {got}, the model expects {expected}")]
    DType {
        /// The input.
        name: String,
        /// The declared type.
        expected: String,
        /// The type given.
        got: DType,
    },
    /// The number of dimensions differs.
    #[error("input '{name}' has {got} dimensions, the model expects {expected}")]
    Rank {
        /// The input.
        name: String,
        /// Declared rank.
        expected: usize,
        /// Given rank.
        got: usize,
    },
    /// A fixed dimension differs.
    #[error("input '{name}' has {got} in dimension {axis}, the model expects {expected}")]
    Dim {
        /// The input.
        name: String,
        /// Which dimension (from 0).
        axis: usize,
        /// Declared size.
        expected: i64,
        /// Given size.
        got: i64,
    },
    /// The shape is negative or holds too many elements.
    #[error(
        "input '{name}' has shape {shape:?}, which is negative or holds more than {max} elements"
    )]
    BadShape {
        /// The input.
        name: String,
        /// The shape given.
        shape: Vec<i64>,
        /// The element limit.
        max: u64,
    },
    /// The element count differs from the shape's product.
    #[error("input '{name}' has {got} elements, its shape {shape:?} holds {expected}")]
    DataLength {
        /// The input.
        name: String,
        /// The shape given.
        shape: Vec<i64>,
        /// The shape's product.
        expected: u64,
        /// Elements given.
        got: usize,
    },
    /// Stacked inputs of one batch disagree on the batch size.
    #[error("the inputs disagree on the batch size: '{name}' has {got}, others have {expected}")]
    BatchSize {
        /// The input.
        name: String,
        /// The first input's batch size.
        expected: i64,
        /// This input's.
        got: i64,
    },
}

impl InputError {
    /// The input the error is about.
    pub fn input(&self) -> &str {
        match self {
            InputError::Missing { name }
            | InputError::Unknown { name, .. }
            | InputError::Duplicate { name }
            | InputError::DType { name, .. }
            | InputError::Rank { name, .. }
            | InputError::Dim { name, .. }
            | InputError::BadShape { name, .. }
            | InputError::DataLength { name, .. }
            | InputError::BatchSize { name, .. } => name,
        }
    }
}

/// Checks `given` against the declared inputs: every input present once,
/// nothing else, each with the declared type, rank and fixed dimensions, as
/// many elements as its shape says, and one batch size across the inputs
/// that batch on their first dimension.
pub fn check_inputs(sig: &Signature, given: &[NamedTensor]) -> Result<(), InputError> {
    for (i, t) in given.iter().enumerate() {
        if given[..i].iter().any(|u| u.name == t.name) {
            return Err(InputError::Duplicate {
                name: t.name.clone(),
            });
        }
        if !sig.inputs.iter().any(|s| s.name == t.name) {
            return Err(InputError::Unknown {
                name: t.name.clone(),
                expected: sig.input_names(),
            });
        }
    }
    let mut batch: Option<i64> = None;
    for spec in &sig.inputs {
        let Some(t) = given.iter().find(|t| t.name == spec.name) else {
            return Err(InputError::Missing {
                name: spec.name.clone(),
            });
        };
        check_one(spec, t)?;
        if spec.batches_on_first_dim() {
            let rows = t.shape[0];
            match batch {
                Some(b) if b != rows => {
                    return Err(InputError::BatchSize {
                        name: spec.name.clone(),
                        expected: b,
                        got: rows,
                    })
                }
                _ => batch = Some(rows),
            }
        }
    }
    Ok(())
}

fn check_one(spec: &TensorSpec, t: &NamedTensor) -> Result<(), InputError> {
    let name = || spec.name.clone();
    let got = t.data.dtype();
    if spec.dtype != Some(got) {
        return Err(InputError::DType {
            name: name(),
            expected: spec.dtype.map_or_else(
                || "a type this server does not serve".into(),
                |d| d.to_string(),
            ),
            got,
        });
    }
    if spec.dims.len() != t.shape.len() {
        return Err(InputError::Rank {
            name: name(),
            expected: spec.dims.len(),
            got: t.shape.len(),
        });
    }
    let Some(expected) = element_count(&t.shape) else {
        return Err(InputError::BadShape {
            name: name(),
            shape: t.shape.clone(),
            max: protocol::MAX_TENSOR_ELEMENTS,
        });
    };
    for (axis, (&want, &have)) in spec.dims.iter().zip(&t.shape).enumerate() {
        if want >= 0 && want != have {
            return Err(InputError::Dim {
                name: name(),
                axis,
                expected: want,
                got: have,
            });
        }
    }
    if t.data.len() as u64 != expected {
        return Err(InputError::DataLength {
            name: name(),
            shape: t.shape.clone(),
            expected,
            got: t.data.len(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::tensor::TensorData;

    fn spec(name: &str, dtype: DType, dims: &[i64]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            dtype: Some(dtype),
            dims: dims.to_vec(),
        }
    }

    fn sig() -> Signature {
        Signature {
            inputs: vec![
                spec("x", DType::Fp32, &[-1, 4]),
                spec("mask", DType::Int64, &[-1, 4]),
            ],
            outputs: vec![spec("y", DType::Fp32, &[-1, 3])],
        }
    }

    fn x(shape: &[i64], n: usize) -> NamedTensor {
        NamedTensor {
            name: "x".into(),
            shape: shape.to_vec(),
            data: TensorData::Fp32(vec![0.5; n]),
        }
    }

    fn mask(rows: i64) -> NamedTensor {
        NamedTensor {
            name: "mask".into(),
            shape: vec![rows, 4],
            data: TensorData::Int64(vec![1; rows as usize * 4]),
        }
    }

    #[test]
    fn tensors_that_fit_pass_in_any_order() {
        assert_eq!(check_inputs(&sig(), &[mask(2), x(&[2, 4], 8)]), Ok(()));
        assert_eq!(check_inputs(&sig(), &[x(&[0, 4], 0), mask(0)]), Ok(()));
        assert!(sig().batchable());
    }

    #[test]
    fn each_misfit_names_its_input() {
        let s = sig();
        let cases: Vec<(Vec<NamedTensor>, &str, &str)> = vec![
            (vec![x(&[2, 4], 8)], "mask", "missing"),
            (
                vec![x(&[2, 4], 8), mask(2), mask(2)],
                "mask",
                "more than once",
            ),
            (
                vec![
                    x(&[2, 4], 8),
                    mask(2),
                    NamedTensor {
                        name: "z".into(),
                        ..x(&[1], 1)
                    },
                ],
                "z",
                "takes x, mask",
            ),
            (vec![x(&[2, 5], 10), mask(2)], "x", "dimension 1"),
            (
                vec![x(&[8], 8), mask(2)],
                "x",
                "has 1 dimensions, the model expects 2",
            ),
            (vec![x(&[2, 4], 7), mask(2)], "x", "7 elements"),
            (vec![x(&[-2, 4], 8), mask(2)], "x", "negative"),
            (vec![x(&[1 << 40, 4], 8), mask(2)], "x", "negative or holds"),
            (vec![x(&[2, 4], 8), mask(3)], "mask", "batch size"),
            (
                vec![
                    NamedTensor {
                        data: TensorData::Fp64(vec![0.0; 8]),
                        ..x(&[2, 4], 8)
                    },
                    mask(2),
                ],
                "x",
                "FP64, the model expects FP32",
            ),
        ];
        for (given, input, says) in cases {
            let err = check_inputs(&s, &given).unwrap_err();
            assert_eq!(err.input(), input, "{err}");
            assert!(err.to_string().contains(says), "{err}");
        }
    }

    #[test]
    fn fixed_batch_or_unserved_inputs_are_not_batchable() {
        let mut s = sig();
        s.inputs[0].dims = vec![1, 4];
        assert!(!s.batchable());
        let mut s = sig();
        s.inputs[1].dtype = None;
        let err = check_inputs(&s, &[x(&[1, 4], 4), mask(1)]).unwrap_err();
        assert!(err.to_string().contains("does not serve"), "{err}");
    }
}
