//! One ONNX model in an ONNX Runtime session: its declared signature, and
//! runs whose inputs are checked against it first.

use std::borrow::Cow;
use std::path::Path;

use ort::session::{Session, SessionInputValue, SessionOutputs};
use ort::value::{Outlet, Tensor, TensorElementType, ValueType};
use protocol::tensor::{DType, NamedTensor, TensorData};

use protocol::tensor::{Signature, TensorSpec};

use super::signature::check_inputs;
use super::{runtime, OnnxError};

/// A loaded model. `run` takes `&mut self`: ONNX Runtime sessions are not
/// safe to run from two threads at once, so a worker owns one.
pub struct OnnxModel {
    session: Session,
    signature: Signature,
}

impl std::fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxModel")
            .field("signature", &self.signature)
            .finish_non_exhaustive()
    }
}

impl OnnxModel {
    /// Loads `model` with ONNX Runtime from `library`, running each request
    /// on `threads` intra-op threads.
    pub fn load(library: &Path, model: &Path, threads: usize) -> Result<Self, OnnxError> {
        let env = runtime::environment(library)?;
        let session = build(env, model, threads.max(1)).map_err(|e| OnnxError::Load {
            path: model.display().to_string(),
            reason: e.to_string(),
        })?;
        let signature = Signature {
            inputs: session.inputs().iter().map(spec_of).collect(),
            outputs: session.outputs().iter().map(spec_of).collect(),
        };
        Ok(OnnxModel { session, signature })
    }

    /// What the model takes and returns.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// Runs the model on `inputs` (checked against the signature first) and
    /// returns every output of a served type, in the model's order.
    pub fn run(&mut self, inputs: &[NamedTensor]) -> Result<Vec<NamedTensor>, OnnxError> {
        check_inputs(&self.signature, inputs)?;
        let mut values: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = Vec::new();
        for spec in &self.signature.inputs {
            let Some(t) = inputs.iter().find(|t| t.name == spec.name) else {
                continue;
            };
            values.push((Cow::Owned(t.name.clone()), to_value(t).map_err(run_error)?));
        }
        let outputs = self.session.run(values).map_err(run_error)?;
        collect(&self.signature.outputs, &outputs)
    }
}

fn build(
    env: &ort::environment::Environment,
    model: &Path,
    threads: usize,
) -> ort::Result<Session> {
    Session::builder(env)?
        .with_intra_threads(threads)?
        .with_inter_threads(1)?
        .commit_from_file(model)
}

fn run_error(e: ort::Error) -> OnnxError {
    OnnxError::Run(e.to_string())
}

fn dtype_of(ty: TensorElementType) -> Option<DType> {
    Some(match ty {
        TensorElementType::Float32 => DType::Fp32,
        TensorElementType::Float64 => DType::Fp64,
        TensorElementType::Int32 => DType::Int32,
        TensorElementType::Int64 => DType::Int64,
        TensorElementType::Uint8 => DType::Uint8,
        TensorElementType::Bool => DType::Bool,
        _ => return None,
    })
}

fn spec_of(outlet: &Outlet) -> TensorSpec {
    let (dtype, dims) = match outlet.dtype() {
        ValueType::Tensor { ty, shape, .. } => (dtype_of(*ty), shape.to_vec()),
        _ => (None, Vec::new()),
    };
    TensorSpec {
        name: outlet.name().to_string(),
        dtype,
        dims,
    }
}

fn to_value(t: &NamedTensor) -> ort::Result<SessionInputValue<'static>> {
    let shape = t.shape.clone();
    Ok(match &t.data {
        TensorData::Fp32(v) => Tensor::from_array((shape, v.clone()))?.into(),
        TensorData::Fp64(v) => Tensor::from_array((shape, v.clone()))?.into(),
        TensorData::Int32(v) => Tensor::from_array((shape, v.clone()))?.into(),
        TensorData::Int64(v) => Tensor::from_array((shape, v.clone()))?.into(),
        TensorData::Uint8(v) => Tensor::from_array((shape, v.clone()))?.into(),
        TensorData::Bool(v) => Tensor::from_array((shape, v.clone()))?.into(),
    })
}

fn collect(
    specs: &[TensorSpec],
    outputs: &SessionOutputs<'_>,
) -> Result<Vec<NamedTensor>, OnnxError> {
    let mut out = Vec::new();
    for spec in specs {
        let Some(dtype) = spec.dtype else { continue };
        let value = outputs.get(&spec.name).ok_or_else(|| {
            OnnxError::Run(format!("the model returned no output '{}'", spec.name))
        })?;
        let (shape, data) = match dtype {
            DType::Fp32 => extract(value, TensorData::Fp32)?,
            DType::Fp64 => extract(value, TensorData::Fp64)?,
            DType::Int32 => extract(value, TensorData::Int32)?,
            DType::Int64 => extract(value, TensorData::Int64)?,
            DType::Uint8 => extract(value, TensorData::Uint8)?,
            DType::Bool => extract(value, TensorData::Bool)?,
        };
        out.push(NamedTensor {
            name: spec.name.clone(),
            shape,
            data,
        });
    }
    Ok(out)
}

fn extract<T: ort::value::PrimitiveTensorElementType + Clone>(
    value: &ort::value::DynValue,
    wrap: fn(Vec<T>) -> TensorData,
) -> Result<(Vec<i64>, TensorData), OnnxError> {
    let (shape, data) = value.try_extract_tensor::<T>().map_err(run_error)?;
    Ok((shape.to_vec(), wrap(data.to_vec())))
}
