//! Our GGUF tokenizer must produce exactly the token ids llama.cpp produces.
//!
//! `tests/data/llamacpp_tokens.json` was generated with llama.cpp as vendored in
//! llama-cpp-python 0.3.36 (built by `bash /work/shared/anchors/llamacpp/build.sh`)
//! from SmolLM2-135M-Instruct.Q4_1.gguf:
//!
//! ```sh
//! BIN=/root/.cache/inferno-anchors/llamacpp-0.3.36/build/bin
//! MODEL=/root/.cache/inferno-anchors/models/SmolLM2-135M-Instruct.Q4_1.gguf
//! $BIN/llama-server -m $MODEL --host 127.0.0.1 --port $PORT -t 1 &
//! # for each TEXT (the list is the "text" fields of the JSON file):
//! curl -s http://127.0.0.1:$PORT/tokenize -H 'Content-Type: application/json' \
//!   -d '{"content": TEXT, "add_special": false, "parse_special": true}'
//! # -> {"tokens": [...]}, saved as {"text": TEXT, "ids": tokens}
//! kill %1
//! ```
//!
//! (The requests were sent from a few lines of Python with `urllib`, one JSON object per
//! entry.)  The same server's `/apply-template` rendered the SmolLM2 ChatML prompts that
//! `chat.rs`'s unit tests expect, byte for byte.
//!
//! The model is found through `INFERNO_TEST_MODEL`, falling back to the path above; the
//! test fails (does not skip) when the file is missing.

use std::path::PathBuf;

use backends::tokenizer::GgufTokenizer;
use candle_core::quantized::gguf_file::Content;

#[path = "common/llamacpp.rs"]
mod llamacpp;

#[test]
fn encode_matches_llamacpp() {
    let path = inferno_cluster_tests::test_model();
    let mut f = std::fs::File::open(&path).unwrap_or_else(|e| {
        panic!(
            "test model {} not found ({e}); set INFERNO_TEST_MODEL to SmolLM2-135M-Instruct GGUF",
            path.display()
        )
    });
    let content = Content::read(&mut f).unwrap();
    let tok = GgufTokenizer::from_gguf(&content).unwrap();

    let data = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/llamacpp_tokens.json"),
    )
    .unwrap();
    let entries: Vec<llamacpp::TokenCase> = serde_json::from_str(&data).unwrap();
    assert!(entries.len() >= 10, "expected the full llama.cpp token set");
    llamacpp::assert_ids_equal_llamacpp(&tok, &entries, None);
}
