//! Property-based fuzzing (proptest; cargo-fuzz needs a nightly compiler)
//! of the files and specs a user or a peer hands us: federated job specs
//! (TOML and JSON), safetensors checkpoints and GGUF headers. Arbitrary
//! and mutated input must be an error, never a panic or an unbounded
//! allocation.

use std::io::Write;

use backends::fl::{JobSpec, NamedTensor, Params};
use backends::gguf::GgufFile;
use proptest::prelude::*;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

const SPEC: &str = include_str!("../../configs/fl-mnist.toml");

fn valid_checkpoint() -> Vec<u8> {
    let params = Params::new(vec![
        NamedTensor::new("w", vec![2, 3], vec![0.5; 6]).unwrap(),
        NamedTensor::new("b", vec![3], vec![0.1; 3]).unwrap(),
    ])
    .unwrap();
    params.to_safetensors().unwrap()
}

/// Writes `bytes` to a temporary file and opens it as GGUF.
fn open_gguf(bytes: &[u8]) {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(bytes).unwrap();
    f.flush().unwrap();
    let _ = GgufFile::open(f.path());
}

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn arbitrary_specs_never_panic(text in ".{0,400}") {
        let _ = JobSpec::from_toml(&text);
        let _ = JobSpec::from_json(&text);
    }

    /// The example spec with one line replaced by anything.
    #[test]
    fn mutated_specs_never_panic(line in 0usize..64, junk in ".{0,60}") {
        let mut lines: Vec<&str> = SPEC.lines().collect();
        let i = line % lines.len();
        lines[i] = &junk;
        let _ = JobSpec::from_toml(&lines.join("\n"));
    }

    #[test]
    fn arbitrary_and_mutated_checkpoints_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
        at in 0usize..4096,
        bit in 0u8..8,
    ) {
        let _ = Params::from_safetensors(&bytes);
        let mut c = valid_checkpoint();
        let i = at % c.len();
        c[i] ^= 1 << bit;
        let _ = Params::from_safetensors(&c);
    }
}

proptest! {
    // Each case writes a file: fewer of them.
    #![proptest_config(config(300))]

    /// The GGUF magic and version followed by anything: the header and
    /// metadata parser must refuse it (counts and lengths are bounded
    /// before anything is allocated).
    #[test]
    fn gguf_headers_never_panic(version in 1u32..5, rest in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let mut bytes = b"GGUF".to_vec();
        bytes.extend_from_slice(&version.to_le_bytes());
        bytes.extend_from_slice(&rest);
        open_gguf(&bytes);
        open_gguf(&rest);
    }

    /// Huge declared counts with nothing behind them.
    #[test]
    fn gguf_huge_counts_never_allocate(tensors in any::<u64>(), kvs in any::<u64>()) {
        let mut bytes = b"GGUF".to_vec();
        bytes.extend_from_slice(&3u32.to_le_bytes());
        bytes.extend_from_slice(&tensors.to_le_bytes());
        bytes.extend_from_slice(&kvs.to_le_bytes());
        open_gguf(&bytes);
    }
}
