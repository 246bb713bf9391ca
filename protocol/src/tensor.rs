//! Tensors as they travel to and from ONNX models: a name, a shape and the
//! elements in row-major order, with the element types the KServe / Triton
//! open inference protocol (v2) names.

use serde::{Deserialize, Serialize};

/// Most elements one tensor of a request may hold (256 Mi: 1 GiB of FP32),
/// whatever its shape says; the frame cap bounds what actually travels.
pub const MAX_TENSOR_ELEMENTS: u64 = 1 << 28;

/// An element type the ONNX backend serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DType {
    /// 32-bit float (`FP32`).
    Fp32,
    /// 64-bit float (`FP64`).
    Fp64,
    /// 32-bit signed integer (`INT32`).
    Int32,
    /// 64-bit signed integer (`INT64`).
    Int64,
    /// Unsigned byte (`UINT8`).
    Uint8,
    /// Boolean (`BOOL`).
    Bool,
}

impl DType {
    /// Every element type served, in a fixed order.
    pub const ALL: [DType; 6] = [
        DType::Fp32,
        DType::Fp64,
        DType::Int32,
        DType::Int64,
        DType::Uint8,
        DType::Bool,
    ];

    /// The type's name in the v2 protocol (`FP32`, `INT64`, ...).
    pub fn v2_name(self) -> &'static str {
        match self {
            DType::Fp32 => "FP32",
            DType::Fp64 => "FP64",
            DType::Int32 => "INT32",
            DType::Int64 => "INT64",
            DType::Uint8 => "UINT8",
            DType::Bool => "BOOL",
        }
    }

    /// The type a v2 name stands for, if it is one served.
    pub fn from_v2_name(name: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.v2_name() == name)
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.v2_name())
    }
}

/// A tensor's elements, row-major.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum TensorData {
    /// `FP32` elements.
    Fp32(Vec<f32>),
    /// `FP64` elements.
    Fp64(Vec<f64>),
    /// `INT32` elements.
    Int32(Vec<i32>),
    /// `INT64` elements.
    Int64(Vec<i64>),
    /// `UINT8` elements.
    Uint8(Vec<u8>),
    /// `BOOL` elements.
    Bool(Vec<bool>),
}

impl TensorData {
    /// The element type.
    pub fn dtype(&self) -> DType {
        match self {
            TensorData::Fp32(_) => DType::Fp32,
            TensorData::Fp64(_) => DType::Fp64,
            TensorData::Int32(_) => DType::Int32,
            TensorData::Int64(_) => DType::Int64,
            TensorData::Uint8(_) => DType::Uint8,
            TensorData::Bool(_) => DType::Bool,
        }
    }

    /// How many elements there are.
    pub fn len(&self) -> usize {
        match self {
            TensorData::Fp32(v) => v.len(),
            TensorData::Fp64(v) => v.len(),
            TensorData::Int32(v) => v.len(),
            TensorData::Int64(v) => v.len(),
            TensorData::Uint8(v) => v.len(),
            TensorData::Bool(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// An empty vector of type `dtype`.
    pub fn empty(dtype: DType) -> TensorData {
        match dtype {
            DType::Fp32 => TensorData::Fp32(Vec::new()),
            DType::Fp64 => TensorData::Fp64(Vec::new()),
            DType::Int32 => TensorData::Int32(Vec::new()),
            DType::Int64 => TensorData::Int64(Vec::new()),
            DType::Uint8 => TensorData::Uint8(Vec::new()),
            DType::Bool => TensorData::Bool(Vec::new()),
        }
    }

    /// Appends `other`'s elements; false (and nothing appended) when the
    /// types differ.
    pub fn extend_from(&mut self, other: &TensorData) -> bool {
        match (self, other) {
            (TensorData::Fp32(a), TensorData::Fp32(b)) => a.extend_from_slice(b),
            (TensorData::Fp64(a), TensorData::Fp64(b)) => a.extend_from_slice(b),
            (TensorData::Int32(a), TensorData::Int32(b)) => a.extend_from_slice(b),
            (TensorData::Int64(a), TensorData::Int64(b)) => a.extend_from_slice(b),
            (TensorData::Uint8(a), TensorData::Uint8(b)) => a.extend_from_slice(b),
            (TensorData::Bool(a), TensorData::Bool(b)) => a.extend_from_slice(b),
            _ => return false,
        }
        true
    }

    /// The elements `range` as a new vector of the same type; None when the
    /// range is out of bounds.
    pub fn slice(&self, range: std::ops::Range<usize>) -> Option<TensorData> {
        Some(match self {
            TensorData::Fp32(v) => TensorData::Fp32(v.get(range)?.to_vec()),
            TensorData::Fp64(v) => TensorData::Fp64(v.get(range)?.to_vec()),
            TensorData::Int32(v) => TensorData::Int32(v.get(range)?.to_vec()),
            TensorData::Int64(v) => TensorData::Int64(v.get(range)?.to_vec()),
            TensorData::Uint8(v) => TensorData::Uint8(v.get(range)?.to_vec()),
            TensorData::Bool(v) => TensorData::Bool(v.get(range)?.to_vec()),
        })
    }
}

/// A named tensor: one input or output of a model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NamedTensor {
    /// The model's name for it.
    pub name: String,
    /// Its dimensions (every one ≥ 0 in a request or an answer).
    pub shape: Vec<i64>,
    /// Its elements, row-major; as many as the shape's product.
    pub data: TensorData,
}

/// One declared input or output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    /// The model's name for it.
    pub name: String,
    /// Its element type; None when the model uses one this backend does not
    /// serve (such an input cannot be fed, such an output is not returned).
    pub dtype: Option<DType>,
    /// Its dimensions; -1 where the model leaves one free (a batch size, a
    /// sequence length).
    pub dims: Vec<i64>,
}

impl TensorSpec {
    /// Whether the first dimension is free, so that requests can be stacked
    /// along it into one batch.
    pub fn batches_on_first_dim(&self) -> bool {
        self.dims.first() == Some(&-1)
    }
}

/// A model's declared inputs and outputs, in the model's order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// The inputs.
    pub inputs: Vec<TensorSpec>,
    /// The outputs.
    pub outputs: Vec<TensorSpec>,
}

impl Signature {
    /// Whether requests to this model can be stacked into one batch: every
    /// input and every served output is free in its first dimension.
    pub fn batchable(&self) -> bool {
        !self.inputs.is_empty()
            && self.inputs.iter().all(TensorSpec::batches_on_first_dim)
            && self
                .outputs
                .iter()
                .filter(|o| o.dtype.is_some())
                .all(TensorSpec::batches_on_first_dim)
    }

    /// The input names, comma-separated, for messages.
    pub fn input_names(&self) -> String {
        self.inputs
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The number of elements a shape holds, or None when a dimension is
/// negative or the product passes [`MAX_TENSOR_ELEMENTS`].
pub fn element_count(shape: &[i64]) -> Option<u64> {
    shape.iter().try_fold(1u64, |n, &d| {
        let d = u64::try_from(d).ok()?;
        n.checked_mul(d).filter(|&n| n <= MAX_TENSOR_ELEMENTS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_names_round_trip_and_unknown_names_are_refused() {
        for d in DType::ALL {
            assert_eq!(DType::from_v2_name(d.v2_name()), Some(d));
            assert_eq!(TensorData::empty(d).dtype(), d);
        }
        assert_eq!(DType::from_v2_name("BYTES"), None);
        assert_eq!(DType::from_v2_name("fp32"), None);
    }

    #[test]
    fn element_counts_refuse_negative_and_overflowing_shapes() {
        assert_eq!(element_count(&[]), Some(1));
        assert_eq!(element_count(&[2, 3, 4]), Some(24));
        assert_eq!(element_count(&[2, 0, 4]), Some(0));
        assert_eq!(element_count(&[2, -1]), None);
        assert_eq!(element_count(&[1 << 20, 1 << 20]), None);
        assert_eq!(element_count(&[i64::MAX, i64::MAX, 0]), None);
    }

    #[test]
    fn extending_mixes_no_types_and_slices_stay_in_bounds() {
        let mut a = TensorData::Fp32(vec![1.0]);
        assert!(a.extend_from(&TensorData::Fp32(vec![2.0, 3.0])));
        assert!(!a.extend_from(&TensorData::Int64(vec![4])));
        assert_eq!(a, TensorData::Fp32(vec![1.0, 2.0, 3.0]));
        assert_eq!(a.slice(1..3), Some(TensorData::Fp32(vec![2.0, 3.0])));
        assert_eq!(a.slice(2..4), None);
    }
}
