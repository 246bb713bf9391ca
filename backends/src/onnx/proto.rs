//! Writing ONNX model files: the subset of the ONNX protobuf schema
//! (`onnx.proto`, proto2) that small feed-forward graphs need, encoded by
//! hand (models, graphs, nodes with int and ints attributes, FP32 and
//! INT64 initializers as raw data, tensor inputs and outputs with fixed or
//! named dimensions). Field numbers are those of `onnx.proto`.

/// A dimension of a graph input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    /// A fixed size.
    Fixed(i64),
    /// A free size, by its symbolic name (e.g. `batch`).
    Named(String),
}

/// A graph input or output: an FP32 tensor of these dimensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueInfo {
    /// Its name.
    pub name: String,
    /// Its dimensions.
    pub dims: Vec<Dim>,
}

/// A node attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attr {
    /// An `INT` attribute.
    Int(&'static str, i64),
    /// An `INTS` attribute.
    Ints(&'static str, Vec<i64>),
}

/// One operator of the graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The operator (`MatMul`, `Conv`, ...), default domain.
    pub op: &'static str,
    /// Its input value names.
    pub inputs: Vec<String>,
    /// Its output value names.
    pub outputs: Vec<String>,
    /// Its attributes.
    pub attrs: Vec<Attr>,
}

/// A constant of the graph.
#[derive(Debug, Clone, PartialEq)]
pub enum Initializer {
    /// FP32 elements, row-major.
    Float {
        /// Its name.
        name: String,
        /// Its shape.
        dims: Vec<i64>,
        /// Its elements.
        data: Vec<f32>,
    },
    /// INT64 elements, row-major.
    Int64 {
        /// Its name.
        name: String,
        /// Its shape.
        dims: Vec<i64>,
        /// Its elements.
        data: Vec<i64>,
    },
}

/// A whole graph.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Graph {
    /// Its name.
    pub name: String,
    /// Operators in topological order.
    pub nodes: Vec<Node>,
    /// Constants.
    pub initializers: Vec<Initializer>,
    /// Inputs fed by the caller.
    pub inputs: Vec<ValueInfo>,
    /// Outputs returned.
    pub outputs: Vec<ValueInfo>,
}

/// ONNX IR version written (ONNX 1.10+).
const IR_VERSION: u64 = 8;
/// `TensorProto.DataType` values.
const FLOAT: u64 = 1;
const INT64: u64 = 7;
/// `AttributeProto.AttributeType` values.
const ATTR_INT: u64 = 2;
const ATTR_INTS: u64 = 7;

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn key(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, (u64::from(field) << 3) | u64::from(wire));
}

fn int(out: &mut Vec<u8>, field: u32, v: i64) {
    key(out, field, 0);
    // Negative int64s are ten-byte varints of their two's complement.
    varint(out, v as u64);
}

fn bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    key(out, field, 2);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn message(out: &mut Vec<u8>, field: u32, build: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    build(&mut inner);
    bytes(out, field, &inner);
}

fn value_info(out: &mut Vec<u8>, field: u32, v: &ValueInfo) {
    message(out, field, |m| {
        bytes(m, 1, v.name.as_bytes());
        // type: TypeProto { tensor_type: { elem_type, shape } }
        message(m, 2, |t| {
            message(t, 1, |tensor| {
                int(tensor, 1, FLOAT as i64);
                message(tensor, 2, |shape| {
                    for d in &v.dims {
                        message(shape, 1, |dim| match d {
                            Dim::Fixed(n) => int(dim, 1, *n),
                            Dim::Named(s) => bytes(dim, 2, s.as_bytes()),
                        });
                    }
                });
            });
        });
    });
}

fn node(out: &mut Vec<u8>, n: &Node, index: usize) {
    message(out, 1, |m| {
        for i in &n.inputs {
            bytes(m, 1, i.as_bytes());
        }
        for o in &n.outputs {
            bytes(m, 2, o.as_bytes());
        }
        bytes(m, 3, format!("{}_{index}", n.op).as_bytes());
        bytes(m, 4, n.op.as_bytes());
        for a in &n.attrs {
            message(m, 5, |attr| match a {
                Attr::Int(name, v) => {
                    bytes(attr, 1, name.as_bytes());
                    int(attr, 3, *v);
                    int(attr, 20, ATTR_INT as i64);
                }
                Attr::Ints(name, vs) => {
                    bytes(attr, 1, name.as_bytes());
                    for v in vs {
                        int(attr, 8, *v);
                    }
                    int(attr, 20, ATTR_INTS as i64);
                }
            });
        }
    });
}

fn initializer(out: &mut Vec<u8>, init: &Initializer) {
    message(out, 5, |t| {
        let (name, dims, kind, raw): (&str, &[i64], u64, Vec<u8>) = match init {
            Initializer::Float { name, dims, data } => (
                name,
                dims,
                FLOAT,
                data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
            Initializer::Int64 { name, dims, data } => (
                name,
                dims,
                INT64,
                data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
        };
        for d in dims {
            int(t, 1, *d);
        }
        int(t, 2, kind as i64);
        bytes(t, 8, name.as_bytes());
        bytes(t, 9, &raw);
    });
}

/// The bytes of an ONNX model file holding `graph`, for the default
/// operator set at version `opset`.
pub fn model_bytes(graph: &Graph, opset: i64) -> Vec<u8> {
    let mut out = Vec::new();
    int(&mut out, 1, IR_VERSION as i64);
    bytes(&mut out, 2, b"inferno");
    message(&mut out, 7, |g| {
        for (i, n) in graph.nodes.iter().enumerate() {
            node(g, n, i);
        }
        bytes(g, 2, graph.name.as_bytes());
        for init in &graph.initializers {
            initializer(g, init);
        }
        for v in &graph.inputs {
            value_info(g, 11, v);
        }
        for v in &graph.outputs {
            value_info(g, 12, v);
        }
    });
    message(&mut out, 8, |o| {
        bytes(o, 1, b"");
        int(o, 2, opset);
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_keys_follow_the_protobuf_encoding() {
        let mut b = Vec::new();
        varint(&mut b, 300);
        assert_eq!(b, [0xac, 0x02]);
        let mut b = Vec::new();
        int(&mut b, 1, -1);
        assert_eq!(b.len(), 11, "a negative int64 is a ten-byte varint");
        let mut b = Vec::new();
        bytes(&mut b, 2, b"ab");
        assert_eq!(b, [0x12, 2, b'a', b'b']);
    }
}
