//! Flat model parameters: named f32 tensors in a fixed order, with the vector
//! arithmetic aggregation and differential privacy need, and (de)serialization
//! to safetensors and to raw little-endian f32 (the anchor's `init_params.bin`).

use std::collections::HashMap;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use super::error::{FlError, Result};

/// Metadata key under which the tensor order is stored in safetensors files.
const ORDER_KEY: &str = "inferno.fl.order";

/// One named tensor: row-major f32 values and their shape.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    /// Tensor name, e.g. `fc0.weight`.
    pub name: String,
    /// Shape, row-major.
    pub shape: Vec<usize>,
    /// Values; `data.len() == shape.iter().product()`.
    pub data: Vec<f32>,
}

impl NamedTensor {
    /// Builds a tensor, checking that the data matches the shape.
    pub fn new(name: impl Into<String>, shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        let name = name.into();
        let expected: usize = shape.iter().product();
        if expected != data.len() {
            return Err(FlError::BadTensor {
                name,
                shape,
                expected,
                actual: data.len(),
            });
        }
        Ok(Self { name, shape, data })
    }
}

/// A tensor's name and shape, without values: what a model expects.
pub type Layout = Vec<(String, Vec<usize>)>;

/// A model's parameters (or an update to them) as an ordered list of named
/// tensors. Arithmetic between two `Params` requires the same layout.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    tensors: Vec<NamedTensor>,
}

impl Params {
    /// Builds parameters from tensors, rejecting duplicate names.
    pub fn new(tensors: Vec<NamedTensor>) -> Result<Self> {
        for (i, t) in tensors.iter().enumerate() {
            if tensors[..i].iter().any(|o| o.name == t.name) {
                return Err(FlError::LayoutMismatch(format!(
                    "duplicate tensor name {}",
                    t.name
                )));
            }
        }
        Ok(Self { tensors })
    }

    /// All-zero parameters with the given layout.
    pub fn zeros(layout: &Layout) -> Self {
        let tensors = layout
            .iter()
            .map(|(name, shape)| NamedTensor {
                name: name.clone(),
                shape: shape.clone(),
                data: vec![0.0; shape.iter().product()],
            })
            .collect();
        Self { tensors }
    }

    /// All-zero parameters with the same layout as `self`.
    pub fn zeros_like(&self) -> Self {
        Self::zeros(&self.layout())
    }

    /// The tensors, in order.
    pub fn tensors(&self) -> &[NamedTensor] {
        &self.tensors
    }

    /// The tensor called `name`, if any.
    pub fn get(&self, name: &str) -> Option<&NamedTensor> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Names and shapes, in order.
    pub fn layout(&self) -> Layout {
        self.tensors
            .iter()
            .map(|t| (t.name.clone(), t.shape.clone()))
            .collect()
    }

    /// Total number of scalar values.
    pub fn num_values(&self) -> usize {
        self.tensors.iter().map(|t| t.data.len()).sum()
    }

    /// Errors unless `other` has exactly the same names and shapes in the same order.
    pub fn check_layout(&self, other: &Params) -> Result<()> {
        if self.tensors.len() != other.tensors.len() {
            return Err(FlError::LayoutMismatch(format!(
                "{} tensors vs {}",
                self.tensors.len(),
                other.tensors.len()
            )));
        }
        for (a, b) in self.tensors.iter().zip(&other.tensors) {
            if a.name != b.name || a.shape != b.shape {
                return Err(FlError::LayoutMismatch(format!(
                    "{} {:?} vs {} {:?}",
                    a.name, a.shape, b.name, b.shape
                )));
            }
        }
        Ok(())
    }

    /// All values, flattened in order.
    pub fn values(&self) -> impl Iterator<Item = &f32> {
        self.tensors.iter().flat_map(|t| t.data.iter())
    }

    /// All values, flattened in order, mutably.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut f32> {
        self.tensors.iter_mut().flat_map(|t| t.data.iter_mut())
    }

    /// Applies `f(self_value, other_value)` element-wise, in place.
    pub fn zip_apply(&mut self, other: &Params, mut f: impl FnMut(&mut f32, f32)) -> Result<()> {
        self.check_layout(other)?;
        for (a, b) in self.values_mut().zip(other.values()) {
            f(a, *b);
        }
        Ok(())
    }

    /// `self + other`.
    pub fn add(&self, other: &Params) -> Result<Params> {
        let mut out = self.clone();
        out.zip_apply(other, |a, b| *a += b)?;
        Ok(out)
    }

    /// `self - other`.
    pub fn sub(&self, other: &Params) -> Result<Params> {
        let mut out = self.clone();
        out.zip_apply(other, |a, b| *a -= b)?;
        Ok(out)
    }

    /// `self * factor`.
    pub fn scale(&self, factor: f32) -> Params {
        let mut out = self.clone();
        out.scale_in_place(factor);
        out
    }

    /// `self *= factor`.
    pub fn scale_in_place(&mut self, factor: f32) {
        for v in self.values_mut() {
            *v *= factor;
        }
    }

    /// `self += alpha * other`.
    pub fn add_scaled(&mut self, other: &Params, alpha: f32) -> Result<()> {
        self.zip_apply(other, |a, b| *a += alpha * b)
    }

    /// Euclidean norm over all values (accumulated in f64).
    pub fn l2_norm(&self) -> f64 {
        self.values()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum::<f64>()
            .sqrt()
    }

    /// Squared Euclidean distance to `other` (accumulated in f64).
    pub fn sq_distance(&self, other: &Params) -> Result<f64> {
        self.check_layout(other)?;
        Ok(self
            .values()
            .zip(other.values())
            .map(|(&a, &b)| {
                let d = f64::from(a) - f64::from(b);
                d * d
            })
            .sum())
    }

    /// Serializes to safetensors bytes (F32 tensors; the order is kept in metadata).
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        let bytes: Vec<Vec<u8>> = self.tensors.iter().map(|t| f32s_to_le(&t.data)).collect();
        let mut views = Vec::with_capacity(self.tensors.len());
        for (t, b) in self.tensors.iter().zip(&bytes) {
            let view = TensorView::new(Dtype::F32, t.shape.clone(), b)
                .map_err(|e| FlError::Safetensors(e.to_string()))?;
            views.push((t.name.clone(), view));
        }
        let order = self
            .tensors
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let meta = HashMap::from([(ORDER_KEY.to_string(), order)]);
        safetensors::tensor::serialize(views, Some(meta))
            .map_err(|e| FlError::Safetensors(e.to_string()))
    }

    /// Parses safetensors bytes holding F32 tensors. The order comes from the
    /// metadata written by [`Params::to_safetensors`], else names sorted.
    pub fn from_safetensors(bytes: &[u8]) -> Result<Params> {
        let st =
            SafeTensors::deserialize(bytes).map_err(|e| FlError::Safetensors(e.to_string()))?;
        let (_, meta) =
            SafeTensors::read_metadata(bytes).map_err(|e| FlError::Safetensors(e.to_string()))?;
        let order: Vec<String> = match meta.metadata().as_ref().and_then(|m| m.get(ORDER_KEY)) {
            Some(o) if !o.is_empty() => o.split(',').map(str::to_string).collect(),
            _ => {
                let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
                names.sort();
                names
            }
        };
        if order.len() != st.len() {
            return Err(FlError::Safetensors(format!(
                "order metadata lists {} tensors, file has {}",
                order.len(),
                st.len()
            )));
        }
        let mut tensors = Vec::with_capacity(order.len());
        for name in order {
            let view = st
                .tensor(&name)
                .map_err(|e| FlError::Safetensors(format!("{name}: {e}")))?;
            if view.dtype() != Dtype::F32 {
                return Err(FlError::Safetensors(format!(
                    "{name}: dtype {:?}, only F32 is supported",
                    view.dtype()
                )));
            }
            let data = le_to_f32s(view.data());
            tensors.push(NamedTensor::new(name, view.shape().to_vec(), data)?);
        }
        Params::new(tensors)
    }

    /// Concatenated little-endian f32 values in order (the `init_params.bin` format).
    pub fn to_raw_le(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.num_values() * 4);
        for v in self.values() {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// Parses concatenated little-endian f32 values into the given layout;
    /// the byte count must match exactly.
    pub fn from_raw_le(bytes: &[u8], layout: &Layout) -> Result<Params> {
        let expected: usize = layout
            .iter()
            .map(|(_, s)| s.iter().product::<usize>() * 4)
            .sum();
        if bytes.len() != expected {
            return Err(FlError::RawSize {
                expected,
                actual: bytes.len(),
            });
        }
        let mut off = 0;
        let mut tensors = Vec::with_capacity(layout.len());
        for (name, shape) in layout {
            let n = shape.iter().product::<usize>() * 4;
            let data = le_to_f32s(&bytes[off..off + n]);
            off += n;
            tensors.push(NamedTensor::new(name.clone(), shape.clone(), data)?);
        }
        Params::new(tensors)
    }
}

/// Little-endian bytes of f32 values.
fn f32s_to_le(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// f32 values from little-endian bytes (a trailing partial value is ignored).
pub(crate) fn le_to_f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Params {
        Params::new(vec![
            NamedTensor::new("w", vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap(),
            NamedTensor::new("b", vec![2], vec![-1.0, 0.5]).unwrap(),
        ])
        .unwrap()
    }

    #[test]
    fn arithmetic() {
        let p = sample();
        let q = p.scale(2.0);
        assert_eq!(q.sub(&p).unwrap(), p);
        assert_eq!(p.add(&p).unwrap(), q);
        let mut r = p.clone();
        r.add_scaled(&p, -1.0).unwrap();
        assert_eq!(r, p.zeros_like());
        let n = p.l2_norm();
        assert!((n - (1.0f64 + 4.0 + 9.0 + 16.0 + 1.0 + 0.25).sqrt()).abs() < 1e-9);
        assert!((p.sq_distance(&q).unwrap() - n * n).abs() < 1e-9);
    }

    #[test]
    fn layout_errors() {
        let p = sample();
        let other =
            Params::new(vec![NamedTensor::new("w", vec![4], vec![0.0; 4]).unwrap()]).unwrap();
        assert!(p.add(&other).is_err());
        assert!(NamedTensor::new("x", vec![3], vec![0.0; 2]).is_err());
        let dup = vec![
            NamedTensor::new("a", vec![1], vec![0.0]).unwrap(),
            NamedTensor::new("a", vec![1], vec![0.0]).unwrap(),
        ];
        assert!(Params::new(dup).is_err());
    }

    #[test]
    fn safetensors_roundtrip_keeps_order() {
        let p = sample();
        let bytes = p.to_safetensors().unwrap();
        let back = Params::from_safetensors(&bytes).unwrap();
        assert_eq!(back, p);
        assert_eq!(back.tensors()[0].name, "w");
    }

    #[test]
    fn candle_reads_our_safetensors() {
        let p = sample();
        let bytes = p.to_safetensors().unwrap();
        let map = candle_core::safetensors::load_buffer(&bytes, &candle_core::Device::Cpu).unwrap();
        let w = map["w"].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(w, p.tensors()[0].data);
        assert_eq!(map["b"].dims(), &[2]);
    }

    #[test]
    fn raw_roundtrip_and_size_check() {
        let p = sample();
        let raw = p.to_raw_le();
        assert_eq!(raw.len(), 24);
        assert_eq!(Params::from_raw_le(&raw, &p.layout()).unwrap(), p);
        assert!(matches!(
            Params::from_raw_le(&raw[..20], &p.layout()),
            Err(FlError::RawSize { .. })
        ));
    }
}
