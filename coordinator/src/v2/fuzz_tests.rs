//! Property-based fuzzing of the v2 infer body parser (proptest): arbitrary
//! bytes with any announced header length, and well-formed requests with
//! arbitrary values in every field, give a refusal or tensors whose element
//! counts match their shapes, and answering them never panics.

use proptest::prelude::*;
use protocol::tensor::{element_count, DType, Signature, TensorSpec};
use serde_json::{json, Value};

use super::tensors::{answer, parse_infer};
use crate::openai::fuzz_tests::json_value;

fn signature() -> Signature {
    let spec = |name: &str, dtype| TensorSpec {
        name: name.into(),
        dtype: Some(dtype),
        dims: vec![-1, 4],
    };
    Signature {
        inputs: vec![spec("x", DType::Fp32), spec("ids", DType::Int64)],
        outputs: vec![spec("y", DType::Fp32)],
    }
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 1000,
        ..ProptestConfig::default()
    }
}

/// Checks a parse: refused, or tensors as long as their shapes say, which
/// can be answered (echoed back as outputs).
fn check(body: &[u8], header_len: Option<usize>) {
    let Ok(call) = parse_infer(body, header_len, &signature()) else {
        return;
    };
    for t in &call.inputs {
        assert_eq!(Some(t.data.len() as u64), element_count(&t.shape), "{t:?}");
    }
    let _ = answer("m", &call, &call.inputs);
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512), cut in 0usize..600) {
        check(&body, Some(cut));
        check(&body, None);
    }

    #[test]
    fn arbitrary_values_in_every_field_never_panic(
        name in json_value(),
        shape in json_value(),
        datatype in prop_oneof![json_value(), Just(json!("FP32")), Just(json!("INT64")), Just(json!("BOOL"))],
        data in json_value(),
        parameters in json_value(),
        outputs in json_value(),
        binary in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let head = json!({
            "inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data, "parameters": parameters}],
            "outputs": outputs,
        })
        .to_string();
        let mut body = head.clone().into_bytes();
        body.extend_from_slice(&binary);
        check(&body, Some(head.len()));
        check(head.as_bytes(), None);
    }

    #[test]
    fn binary_inputs_of_any_announced_size_never_panic(
        size in prop_oneof![any::<u64>().prop_map(Value::from), (0u64..80).prop_map(Value::from)],
        rows in -2i64..4,
        binary in proptest::collection::vec(any::<u8>(), 0..80),
    ) {
        let head = json!({
            "inputs": [{"name": "x", "shape": [rows, 4], "datatype": "FP32", "parameters": {"binary_data_size": size}}],
            "parameters": {"binary_data_output": true},
        })
        .to_string();
        let mut body = head.clone().into_bytes();
        body.extend_from_slice(&binary);
        check(&body, Some(head.len()));
    }
}
