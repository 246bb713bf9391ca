//! Qwen2.5-Coder-0.5B-Instruct Q4_K_M (architecture qwen2: QKV biases, NeoX
//! RoPE, an untied Q8_0 head; Q5_0, Q4_K, Q6_K and Q8_0 weights) against
//! llama.cpp: token ids, chat prompts, perplexity, and a sensible greedy
//! completion.
//!
//! `tests/data/llamacpp_qwen2.5-coder.json` comes from llama.cpp as vendored
//! in llama-cpp-python 0.3.36 (`../shared/anchors/llamacpp/build.sh`):
//! `python3 scripts/llamacpp-testdata.py <the gguf> qwen2.5-coder` (llama-server's
//! `/tokenize` with `parse_special`, and `/apply-template` under `--jinja`).

mod common;
#[path = "common/llamacpp.rs"]
mod llamacpp;

use std::path::PathBuf;

use backends::chat::ChatTemplate;
use backends::engine::{spawn_engine, EngineConfig};
use backends::gguf::GgufFile;
use backends::model::Transformer;
use backends::tokenizer::GgufTokenizer;
use protocol::{ChatMessage, GenerateRequest, SamplingParams, ToolCall};

#[derive(serde::Deserialize)]
struct Reference {
    tokens: Vec<llamacpp::TokenCase>,
    templates: Vec<TemplateCase>,
}

#[derive(serde::Deserialize)]
struct TemplateCase {
    messages: Vec<ChatMessage>,
    prompt: String,
}

fn reference() -> Reference {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/llamacpp_qwen2.5-coder.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn tokenizer(file: &GgufFile) -> GgufTokenizer {
    GgufTokenizer::from_gguf(&file.content).unwrap()
}

#[test]
fn token_ids_equal_llamacpp() {
    let file = GgufFile::open(&inferno_cluster_tests::qwen_model()).unwrap();
    let tok = tokenizer(&file);
    let cases = reference().tokens;
    assert!(cases.len() >= 20);
    llamacpp::assert_ids_equal_llamacpp(&tok, &cases, None);
}

#[test]
fn chat_prompts_equal_llama_server() {
    let file = GgufFile::open(&inferno_cluster_tests::qwen_model()).unwrap();
    let tok = tokenizer(&file);
    let chat = ChatTemplate::from_gguf(&file.content, &tok)
        .unwrap()
        .expect("Qwen ships a chat template");
    let cases = reference().templates;
    assert!(cases.len() >= 3);
    for c in &cases {
        assert_eq!(chat.render(&c.messages, None, true).unwrap(), c.prompt);
    }
}

/// Tools reach the model the way Qwen2.5 was trained on them: the
/// definitions in the system turn, earlier calls as `<tool_call>` blocks in
/// the assistant turn and results as `<tool_response>` blocks.
#[test]
fn the_template_offers_tools_and_renders_calls_and_results() {
    let file = GgufFile::open(&inferno_cluster_tests::qwen_model()).unwrap();
    let tok = tokenizer(&file);
    let chat = ChatTemplate::from_gguf(&file.content, &tok)
        .unwrap()
        .unwrap();
    let tools = serde_json::json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    let mut call = ChatMessage::new("assistant", "");
    call.tool_calls = vec![ToolCall {
        id: "call_1".into(),
        name: "get_weather".into(),
        arguments: "{\"city\": \"Paris\"}".into(),
    }];
    let mut result = ChatMessage::new("tool", "18 C");
    result.tool_call_id = Some("call_1".into());
    let messages = [ChatMessage::new("user", "Weather in Paris?"), call, result];
    let prompt = chat.render(&messages, Some(&tools), true).unwrap();
    assert!(
        prompt
            .contains("<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"get_weather\""),
        "{prompt}"
    );
    assert!(
        prompt.contains(
            "<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call><|im_end|>"
        ),
        "{prompt}"
    );
    assert!(
        prompt.contains("<|im_start|>user\n<tool_response>\n18 C\n</tool_response><|im_end|>"),
        "{prompt}"
    );
    assert!(prompt.ends_with("<|im_start|>assistant\n"), "{prompt}");
    let without = chat.render(&messages[..1], None, true).unwrap();
    assert!(!without.contains("<tools>"), "{without}");
}

/// `llama-perplexity -m <qwen 0.5B> -f /usr/share/common-licenses/GPL-3 -c 256
/// --chunks 8 -t 2` printed `Final estimate: PPL = 8.2709 +/- 0.61284`.
#[test]
fn perplexity_is_within_one_percent_of_llamacpp() {
    let text = std::fs::read_to_string("/usr/share/common-licenses/GPL-3")
        .expect("Debian's base-files ships the GPL-3 text");
    let file = GgufFile::open(&inferno_cluster_tests::qwen_model()).unwrap();
    let tok = tokenizer(&file);
    let model = Transformer::load(&file, 2).unwrap();
    let tokens = tok.encode(&text).unwrap();
    let bos = tok.add_bos().then(|| tok.bos_id()).flatten();
    let p =
        backends::perplexity::perplexity(&model, &tokens, bos, 256, Some(8), |_, _| {}).unwrap();
    assert_eq!(p.chunks, 8);
    assert_eq!(p.scored_tokens, 8 * 127);
    let llamacpp = 8.2709;
    assert!(
        (p.ppl / llamacpp - 1.0).abs() < 0.01,
        "ppl {} vs llama.cpp {llamacpp}",
        p.ppl
    );
}

#[test]
fn greedy_fibonacci_completion_computes_fibonacci() {
    let (h, _) = spawn_engine(
        &inferno_cluster_tests::qwen_model(),
        &EngineConfig::default(),
    )
    .unwrap();
    let prompt = h.frontend().encode("def fibonacci(n):").unwrap();
    let req = GenerateRequest {
        prompt_tokens: prompt,
        max_tokens: Some(96),
        sampling: SamplingParams::greedy(),
        ..GenerateRequest::default()
    };
    let out = common::collect(h.submit(req).unwrap());
    assert!(out.finish.is_some(), "generation failed: {:?}", out.error);
    let text = out.text;
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    assert!(
        compact.contains("fibonacci(n-1)+fibonacci(n-2)") || compact.contains("a,b=b,a+b"),
        "not a Fibonacci body:\n{text}"
    );
}
