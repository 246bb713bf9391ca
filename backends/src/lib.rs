//! Model math for Inferno nodes: GGUF LLMs with their own tokenizer and chat
//! template, sampling, and the continuous-batching engine; ONNX models
//! through ONNX Runtime with dynamic batching; federated-learning models.

pub mod card;
pub mod chat;
pub mod engine;
pub mod fl;
pub mod frontend;
pub mod gguf;
pub mod grammar;
mod jinja_json;
pub mod kernels;
pub mod logprobs;
pub mod model;
pub mod onnx;
pub mod perplexity;
pub mod prefix_index;
pub mod sampling;
pub mod scheduler;
pub mod stop;
pub mod tokenizer;

/// The message of a caught panic (its `&str` or `String` payload).
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".into()
    }
}
