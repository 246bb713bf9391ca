//! Bad model files are refused with clear errors, never a panic.

use std::io::Write;

use backends::engine::{Engine, EngineConfig, EngineError};
use backends::gguf::GgufError;
use backends::model::ModelError;
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

fn load_err(path: &std::path::Path) -> GgufError {
    match Engine::load(path, &EngineConfig::default()) {
        Err(EngineError::Model(ModelError::Gguf(e))) => e,
        Err(other) => panic!("expected a GGUF error, got {other}"),
        Ok(_) => panic!("{} loaded but should have been refused", path.display()),
    }
}

#[test]
fn garbage_file_is_refused() {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(b"this is not a gguf file at all, just text")
        .unwrap();
    let e = load_err(f.path());
    assert!(matches!(e, GgufError::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains("not a valid GGUF"), "{e}");
}

#[test]
fn truncated_file_is_refused() {
    let bytes = std::fs::read(inferno_cluster_tests::test_model()).unwrap();
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(&bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(f.path());
    assert!(e.to_string().contains("truncated"), "{e}");
}

#[test]
fn header_cut_short_is_refused() {
    let bytes = std::fs::read(inferno_cluster_tests::test_model()).unwrap();
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(&bytes[..4096]).unwrap();
    let e = load_err(f.path());
    assert!(matches!(e, GgufError::Corrupt { .. }), "{e}");
}

#[test]
fn other_architecture_is_refused() {
    let f = tempfile::NamedTempFile::new().unwrap();
    let arch = Value::String("mamba".into());
    let t = QTensor::quantize(
        &Tensor::zeros((4, 32), candle_core::DType::F32, &Device::Cpu).unwrap(),
        GgmlDType::F32,
    )
    .unwrap();
    let mut w = std::fs::File::create(f.path()).unwrap();
    gguf_file::write(
        &mut w,
        &[("general.architecture", &arch)],
        &[("token_embd.weight", &t)],
    )
    .unwrap();
    drop(w);
    let e = load_err(f.path());
    assert!(
        matches!(e, GgufError::UnsupportedArchitecture { ref arch, .. } if arch == "mamba"),
        "{e}"
    );
}

#[test]
fn missing_file_is_an_io_error() {
    let e = load_err(std::path::Path::new("/nonexistent/model.gguf"));
    assert!(matches!(e, GgufError::Io { .. }), "{e}");
}
