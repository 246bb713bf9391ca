//! The KServe / Triton open inference protocol (v2) infer request and
//! response bodies, free of I/O: JSON tensors, and the binary tensor data
//! extension (a JSON header of `Inference-Header-Content-Length` bytes
//! followed by the raw little-endian tensors it announces).

use protocol::tensor::{element_count, DType, NamedTensor, Signature, TensorData};
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// A request body that cannot be served, with what the client is told
/// (an HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(pub String);

fn bad(msg: impl Into<String>) -> BadRequest {
    BadRequest(msg.into())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InferBody {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Map<String, Value>,
    inputs: Vec<InputBody>,
    #[serde(default)]
    outputs: Option<Vec<OutputBody>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InputBody {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    #[serde(default)]
    data: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputBody {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

/// An output the client asked for, and whether it wants it as binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedOutput {
    /// Its name.
    pub name: String,
    /// Binary tensor data rather than a JSON array.
    pub binary: bool,
}

/// A parsed infer request.
#[derive(Debug, Clone, PartialEq)]
pub struct InferCall {
    /// The request id, echoed in the answer.
    pub id: Option<String>,
    /// The input tensors.
    pub inputs: Vec<NamedTensor>,
    /// The outputs to return (every served one when the request named none).
    pub outputs: Vec<WantedOutput>,
}

/// Request parameters served (others are refused by name).
const REQUEST_PARAMETERS: &[&str] = &["binary_data_output"];

/// Parses an infer request body. `header_len` is the
/// `Inference-Header-Content-Length` header: the JSON part's length when
/// binary tensors follow it. Outputs are checked against `signature`.
pub fn parse_infer(
    body: &[u8],
    header_len: Option<usize>,
    signature: &Signature,
) -> Result<InferCall, BadRequest> {
    let (json_part, mut binary) = match header_len {
        Some(n) if n <= body.len() => body.split_at(n),
        Some(n) => {
            return Err(bad(format!(
                "Inference-Header-Content-Length is {n}, but the body has only {} bytes",
                body.len()
            )))
        }
        None => (body, &[][..]),
    };
    let req: InferBody = serde_json::from_slice(json_part)
        .map_err(|e| bad(format!("invalid inference request: {e}")))?;
    if let Some(p) = req
        .parameters
        .keys()
        .find(|k| !REQUEST_PARAMETERS.contains(&k.as_str()))
    {
        return Err(bad(format!("request parameter '{p}' is not supported")));
    }
    let binary_default = flag(&req.parameters, "binary_data_output", "the request")?;
    let mut inputs = Vec::with_capacity(req.inputs.len());
    for input in req.inputs {
        inputs.push(parse_input(input, &mut binary)?);
    }
    if !binary.is_empty() {
        return Err(bad(format!(
            "{} bytes of binary data follow the inputs that no input announced",
            binary.len()
        )));
    }
    let served = || {
        signature
            .outputs
            .iter()
            .filter(|o| o.dtype.is_some())
            .map(|o| o.name.clone())
    };
    let outputs = match req.outputs {
        None => served()
            .map(|name| WantedOutput {
                name,
                binary: binary_default,
            })
            .collect(),
        Some(list) => {
            let mut out: Vec<WantedOutput> = Vec::with_capacity(list.len());
            for o in list {
                if !served().any(|n| n == o.name) {
                    return Err(bad(format!(
                        "output '{}' is not an output of this model",
                        o.name
                    )));
                }
                if out.iter().any(|w| w.name == o.name) {
                    return Err(bad(format!("output '{}' is asked for twice", o.name)));
                }
                if let Some(p) = o.parameters.keys().find(|k| k.as_str() != "binary_data") {
                    return Err(bad(format!(
                        "output parameter '{p}' of '{}' is not supported",
                        o.name
                    )));
                }
                let binary = match o.parameters.get("binary_data") {
                    None => binary_default,
                    Some(_) => flag(
                        &o.parameters,
                        "binary_data",
                        &format!("output '{}'", o.name),
                    )?,
                };
                out.push(WantedOutput {
                    name: o.name,
                    binary,
                });
            }
            out
        }
    };
    Ok(InferCall {
        id: req.id,
        inputs,
        outputs,
    })
}

fn flag(params: &Map<String, Value>, key: &str, of: &str) -> Result<bool, BadRequest> {
    match params.get(key) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(bad(format!("parameter '{key}' of {of} must be a boolean"))),
    }
}

fn parse_input(input: InputBody, binary: &mut &[u8]) -> Result<NamedTensor, BadRequest> {
    let name = input.name;
    let dtype = DType::from_v2_name(&input.datatype).ok_or_else(|| {
        bad(format!(
            "input '{name}' has datatype {}, which is not served (FP32, FP64, INT32, INT64, UINT8, BOOL are)",
            input.datatype
        ))
    })?;
    let count = element_count(&input.shape).ok_or_else(|| {
        bad(format!(
            "input '{name}' has shape {:?}, which is negative or too large",
            input.shape
        ))
    })?;
    if let Some(p) = input
        .parameters
        .keys()
        .find(|k| k.as_str() != "binary_data_size")
    {
        return Err(bad(format!(
            "input parameter '{p}' of '{name}' is not supported"
        )));
    }
    let data = match (input.parameters.get("binary_data_size"), input.data) {
        (Some(size), None) => {
            let size = size
                .as_u64()
                .and_then(|s| usize::try_from(s).ok())
                .ok_or_else(|| bad(format!("binary_data_size of '{name}' must be a byte count")))?;
            if size > binary.len() {
                return Err(bad(format!(
                    "input '{name}' announces {size} bytes of binary data, {} follow",
                    binary.len()
                )));
            }
            let (mine, rest) = binary.split_at(size);
            *binary = rest;
            from_bytes(dtype, mine).ok_or_else(|| {
                bad(format!(
                    "input '{name}': {size} bytes are not a whole number of {dtype} elements"
                ))
            })?
        }
        (None, Some(data)) => {
            from_json(dtype, &data, count).map_err(|why| bad(format!("input '{name}': {why}")))?
        }
        (Some(_), Some(_)) => {
            return Err(bad(format!(
                "input '{name}' has both JSON data and binary_data_size"
            )))
        }
        (None, None) => return Err(bad(format!("input '{name}' has no data"))),
    };
    if data.len() as u64 != count {
        return Err(bad(format!(
            "input '{name}' has {} elements, its shape {:?} holds {count}",
            data.len(),
            input.shape
        )));
    }
    Ok(NamedTensor {
        name,
        shape: input.shape,
        data,
    })
}

/// The elements of a JSON array (nested as the shape or flat), at most
/// `max` of them.
fn from_json(dtype: DType, data: &Value, max: u64) -> Result<TensorData, String> {
    let mut flat: Vec<&Value> = Vec::new();
    let mut stack = vec![data];
    while let Some(v) = stack.pop() {
        match v {
            Value::Array(items) => stack.extend(items.iter().rev()),
            scalar => {
                if flat.len() as u64 >= max {
                    return Err(format!("more elements than its shape holds ({max})"));
                }
                flat.push(scalar);
            }
        }
    }
    let not = |i: usize, what: &str| format!("element {i} is not {what}");
    Ok(match dtype {
        DType::Fp32 => TensorData::Fp32(
            flat.iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_f64()
                        .map(|f| f as f32)
                        .ok_or_else(|| not(i, "a number"))
                })
                .collect::<Result<_, _>>()?,
        ),
        DType::Fp64 => TensorData::Fp64(
            flat.iter()
                .enumerate()
                .map(|(i, v)| v.as_f64().ok_or_else(|| not(i, "a number")))
                .collect::<Result<_, _>>()?,
        ),
        DType::Int32 => TensorData::Int32(
            flat.iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_i64()
                        .and_then(|n| i32::try_from(n).ok())
                        .ok_or_else(|| not(i, "a 32-bit integer"))
                })
                .collect::<Result<_, _>>()?,
        ),
        DType::Int64 => TensorData::Int64(
            flat.iter()
                .enumerate()
                .map(|(i, v)| v.as_i64().ok_or_else(|| not(i, "a 64-bit integer")))
                .collect::<Result<_, _>>()?,
        ),
        DType::Uint8 => TensorData::Uint8(
            flat.iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_u64()
                        .and_then(|n| u8::try_from(n).ok())
                        .ok_or_else(|| not(i, "an integer from 0 to 255"))
                })
                .collect::<Result<_, _>>()?,
        ),
        DType::Bool => TensorData::Bool(
            flat.iter()
                .enumerate()
                .map(|(i, v)| v.as_bool().ok_or_else(|| not(i, "true or false")))
                .collect::<Result<_, _>>()?,
        ),
    })
}

fn chunks<const N: usize, T>(bytes: &[u8], f: fn([u8; N]) -> T) -> Option<Vec<T>> {
    if !bytes.len().is_multiple_of(N) {
        return None;
    }
    Some(
        bytes
            .chunks_exact(N)
            .map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                f(a)
            })
            .collect(),
    )
}

/// Raw little-endian elements (BOOL: one byte each).
fn from_bytes(dtype: DType, bytes: &[u8]) -> Option<TensorData> {
    Some(match dtype {
        DType::Fp32 => TensorData::Fp32(chunks(bytes, f32::from_le_bytes)?),
        DType::Fp64 => TensorData::Fp64(chunks(bytes, f64::from_le_bytes)?),
        DType::Int32 => TensorData::Int32(chunks(bytes, i32::from_le_bytes)?),
        DType::Int64 => TensorData::Int64(chunks(bytes, i64::from_le_bytes)?),
        DType::Uint8 => TensorData::Uint8(bytes.to_vec()),
        DType::Bool => TensorData::Bool(bytes.iter().map(|&b| b != 0).collect()),
    })
}

fn to_bytes(data: &TensorData) -> Vec<u8> {
    match data {
        TensorData::Fp32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::Fp64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::Int32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::Int64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::Uint8(v) => v.clone(),
        TensorData::Bool(v) => v.iter().map(|&b| u8::from(b)).collect(),
    }
}

fn to_json(data: &TensorData) -> Value {
    match data {
        // A NaN or infinite output has no JSON number: null says so.
        TensorData::Fp32(v) => json!(v),
        TensorData::Fp64(v) => json!(v),
        TensorData::Int32(v) => json!(v),
        TensorData::Int64(v) => json!(v),
        TensorData::Uint8(v) => json!(v),
        TensorData::Bool(v) => json!(v),
    }
}

/// An answer body, and the `Inference-Header-Content-Length` to send with
/// it when binary outputs follow the JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct InferAnswer {
    /// The whole body.
    pub body: Vec<u8>,
    /// The JSON part's length, when binary data follows it.
    pub header_len: Option<usize>,
}

/// Builds the answer to `call` from the model's outputs.
pub fn answer(model: &str, call: &InferCall, outputs: &[NamedTensor]) -> InferAnswer {
    let mut listed = Vec::with_capacity(call.outputs.len());
    let mut blobs: Vec<u8> = Vec::new();
    for want in &call.outputs {
        let Some(t) = outputs.iter().find(|t| t.name == want.name) else {
            continue;
        };
        let mut out = json!({
            "name": t.name,
            "datatype": t.data.dtype().v2_name(),
            "shape": t.shape,
        });
        if want.binary {
            let bytes = to_bytes(&t.data);
            out["parameters"] = json!({ "binary_data_size": bytes.len() });
            blobs.extend_from_slice(&bytes);
        } else {
            out["data"] = to_json(&t.data);
        }
        listed.push(out);
    }
    let mut head = json!({
        "model_name": model,
        "model_version": "1",
        "outputs": listed,
    });
    if let Some(id) = &call.id {
        head["id"] = json!(id);
    }
    let mut body = head.to_string().into_bytes();
    let header_len = (!blobs.is_empty()).then_some(body.len());
    body.extend_from_slice(&blobs);
    InferAnswer { body, header_len }
}

/// The model metadata object (`GET /v2/models/{name}`).
pub fn metadata(model: &str, signature: &Signature) -> Value {
    let spec = |s: &protocol::tensor::TensorSpec| {
        json!({
            "name": s.name,
            "datatype": s.dtype.map_or("UNSUPPORTED", DType::v2_name),
            "shape": s.dims,
        })
    };
    json!({
        "name": model,
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": signature.inputs.iter().map(spec).collect::<Vec<_>>(),
        "outputs": signature
            .outputs
            .iter()
            .filter(|o| o.dtype.is_some())
            .map(spec)
            .collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::tensor::TensorSpec;

    fn sig() -> Signature {
        Signature {
            inputs: vec![TensorSpec {
                name: "x".into(),
                dtype: Some(DType::Fp32),
                dims: vec![-1, 2],
            }],
            outputs: vec![
                TensorSpec {
                    name: "y".into(),
                    dtype: Some(DType::Fp32),
                    dims: vec![-1, 2],
                },
                TensorSpec {
                    name: "z".into(),
                    dtype: Some(DType::Int64),
                    dims: vec![-1],
                },
            ],
        }
    }

    #[test]
    fn json_tensors_nested_or_flat_parse_to_row_major_elements() {
        for data in [json!([[1.0, 2.0], [3.0, 4.5]]), json!([1, 2, 3, 4.5])] {
            let body = json!({"id": "r1", "inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": data}]});
            let call = parse_infer(body.to_string().as_bytes(), None, &sig()).unwrap();
            assert_eq!(call.id.as_deref(), Some("r1"));
            assert_eq!(
                call.inputs[0].data,
                TensorData::Fp32(vec![1.0, 2.0, 3.0, 4.5])
            );
            assert_eq!(call.outputs.len(), 2, "every output by default");
            assert!(call.outputs.iter().all(|o| !o.binary));
        }
    }

    #[test]
    fn binary_inputs_follow_the_json_header_and_outputs_can_be_binary() {
        let head = json!({
            "inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}],
            "outputs": [{"name": "z", "parameters": {"binary_data": true}}],
        })
        .to_string();
        let mut body = head.clone().into_bytes();
        body.extend_from_slice(&1.5f32.to_le_bytes());
        body.extend_from_slice(&(-2.0f32).to_le_bytes());
        let call = parse_infer(&body, Some(head.len()), &sig()).unwrap();
        assert_eq!(call.inputs[0].data, TensorData::Fp32(vec![1.5, -2.0]));
        assert_eq!(
            call.outputs,
            vec![WantedOutput {
                name: "z".into(),
                binary: true
            }]
        );

        let outputs = vec![
            NamedTensor {
                name: "y".into(),
                shape: vec![1, 2],
                data: TensorData::Fp32(vec![0.0, 1.0]),
            },
            NamedTensor {
                name: "z".into(),
                shape: vec![1],
                data: TensorData::Int64(vec![7]),
            },
        ];
        let a = answer("m", &call, &outputs);
        let n = a.header_len.expect("binary data follows");
        let head: Value = serde_json::from_slice(&a.body[..n]).unwrap();
        assert_eq!(head["outputs"].as_array().unwrap().len(), 1);
        assert_eq!(head["outputs"][0]["name"], "z");
        assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], 8);
        assert_eq!(&a.body[n..], &7i64.to_le_bytes());
    }

    #[test]
    fn each_malformed_request_is_refused_naming_what_is_wrong() {
        let cases = [
            (
                json!({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "BYTES", "data": ["a", "b"]}]}),
                "BYTES",
            ),
            (
                json!({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, "b"]}]}),
                "element 1 is not a number",
            ),
            (
                json!({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2, 3]}]}),
                "more elements",
            ),
            (
                json!({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2]}]}),
                "has 2 elements",
            ),
            (
                json!({"inputs": [{"name": "x", "shape": [-1, 2], "datatype": "FP32", "data": []}]}),
                "negative",
            ),
            (
                json!({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "UINT8", "data": [1, 300]}]}),
                "0 to 255",
            ),
            (
                json!({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32"}]}),
                "no data",
            ),
            (
                json!({"inputs": [], "outputs": [{"name": "w"}]}),
                "output 'w'",
            ),
            (
                json!({"inputs": [], "parameters": {"sequence_id": 3}}),
                "'sequence_id'",
            ),
            (json!({"inputs": [], "frobnicate": 1}), "frobnicate"),
            (
                json!({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}]}),
                "8 bytes",
            ),
        ];
        for (body, says) in cases {
            let err = parse_infer(body.to_string().as_bytes(), None, &sig()).unwrap_err();
            assert!(err.0.contains(says), "{body}: {err}");
        }
        let err = parse_infer(b"{}", Some(10), &sig()).unwrap_err();
        assert!(err.0.contains("Inference-Header-Content-Length"), "{err}");
    }

    #[test]
    fn metadata_lists_the_declared_tensors_with_v2_types() {
        let m = metadata("relu", &sig());
        assert_eq!(m["name"], "relu");
        assert_eq!(
            m["inputs"][0],
            json!({"name": "x", "datatype": "FP32", "shape": [-1, 2]})
        );
        assert_eq!(m["outputs"][1]["datatype"], "INT64");
    }
}
