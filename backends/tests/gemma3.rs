//! Gemma 3 270M Q4_K_M (architecture gemma3: sliding-window layers, q/k
//! norms, GeGLU, post-norms, scaled embeddings, head dim 256 with one KV
//! head; a SentencePiece vocabulary of 262,144 tokens) against llama.cpp:
//! token ids, perplexity and a sensible greedy completion.
//!
//! `tests/data/llamacpp_gemma3.json` comes from llama.cpp as vendored in
//! llama-cpp-python 0.3.36: `python3 scripts/llamacpp-testdata.py <the gguf>
//! gemma3` (llama-server's `/tokenize` with `parse_special`, no BOS).

mod common;
#[path = "common/llamacpp.rs"]
mod llamacpp;

use std::path::PathBuf;

use backends::engine::{spawn_engine, EngineConfig};
use backends::gguf::GgufFile;
use backends::model::Transformer;
use backends::tokenizer::GgufTokenizer;
use protocol::{GenerateRequest, SamplingParams};

#[derive(serde::Deserialize)]
struct Reference {
    tokens: Vec<llamacpp::TokenCase>,
}

#[test]
fn token_ids_equal_llamacpp() {
    let file = GgufFile::open(&inferno_cluster_tests::gemma_model()).unwrap();
    let tok = GgufTokenizer::from_gguf(&file.content).unwrap();
    assert!(tok.add_bos(), "Gemma prompts start with <bos>");
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/llamacpp_gemma3.json");
    let cases: Reference = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(cases.tokens.len() >= 20);
    // The reference was taken without BOS.
    llamacpp::assert_ids_equal_llamacpp(&tok, &cases.tokens, tok.bos_id());
}

/// SentencePiece path of the literal-span encoding: `<start_of_turn>` a
/// user typed stays text, the same text outside a literal span is the
/// control token, and a span without such text encodes as before.
#[test]
fn special_token_text_in_a_literal_span_stays_text() {
    let file = GgufFile::open(&inferno_cluster_tests::gemma_model()).unwrap();
    let tok = GgufTokenizer::from_gguf(&file.content).unwrap();
    let text = "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n";
    // The ids of the two turn markers (each one token after BOS).
    let id = |t: &str| *tok.encode(t).unwrap().last().unwrap();
    let turns = [id("<start_of_turn>"), id("<end_of_turn>")];
    let specials = |ids: &[u32]| ids.iter().filter(|i| turns.contains(i)).count();
    let whole = tok.encode(text).unwrap();
    assert_eq!(specials(&whole), 3, "{whole:?}");
    let typed = tok
        .encode_with_literals(text, std::slice::from_ref(&(0..text.len())))
        .unwrap();
    assert_eq!(specials(&typed), 0, "{typed:?}");
    assert!(typed.len() > whole.len());
    let user = text.find("hi").unwrap();
    let benign = tok
        .encode_with_literals(text, std::slice::from_ref(&(user..user + 2)))
        .unwrap();
    assert_eq!(benign, whole);
}

/// `llama-perplexity -m <gemma 3 270M> -f /usr/share/common-licenses/GPL-3
/// -c 1024 --chunks 1 -t 2` printed `Final estimate: PPL = 16.0395 +/- 2.08464`
/// (ours: 16.0064; over 2 chunks 18.4405 and ours 18.4023). At ctx 1024 the
/// scored half of the chunk lies past the 512-position window, so the
/// sliding layers are exercised.
#[test]
fn perplexity_is_within_one_percent_of_llamacpp() {
    let text = std::fs::read_to_string("/usr/share/common-licenses/GPL-3")
        .expect("Debian's base-files ships the GPL-3 text");
    let file = GgufFile::open(&inferno_cluster_tests::gemma_model()).unwrap();
    let tok = GgufTokenizer::from_gguf(&file.content).unwrap();
    let model = Transformer::load(&file, 2).unwrap();
    let tokens = tok.encode(&text).unwrap();
    let bos = tok.add_bos().then(|| tok.bos_id()).flatten();
    let p =
        backends::perplexity::perplexity(&model, &tokens, bos, 1024, Some(1), |_, _| {}).unwrap();
    assert_eq!(p.chunks, 1);
    let llamacpp = 16.0395;
    assert!(
        (p.ppl / llamacpp - 1.0).abs() < 0.01,
        "ppl {} vs llama.cpp {llamacpp}",
        p.ppl
    );
}

#[test]
fn greedy_completion_makes_sense() {
    let (h, _) = spawn_engine(
        &inferno_cluster_tests::gemma_model(),
        &EngineConfig::default(),
    )
    .unwrap();
    let prompt = h
        .frontend()
        .encode("Monday, Tuesday, Wednesday, Thursday,")
        .unwrap();
    let req = GenerateRequest {
        prompt_tokens: prompt,
        max_tokens: Some(8),
        sampling: SamplingParams::greedy(),
        ..GenerateRequest::default()
    };
    let out = common::collect(h.submit(req).unwrap());
    assert!(out.finish.is_some(), "generation failed: {:?}", out.error);
    let text = out.text;
    assert!(text.contains("Friday"), "{text:?}");
}
