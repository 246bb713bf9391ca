//! What a GGUF file says about its model, read from the header alone (the
//! tensors stay unread): the [`ModelCard`] nodes announce and `/v1/models`
//! reports.

use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use protocol::ModelCard;

use crate::gguf::{GgufError, GgufFile};

/// llama.cpp's `general.file_type` values (`llama_ftype`) and their names.
const FILE_TYPES: &[(u32, &str)] = &[
    (0, "F32"),
    (1, "F16"),
    (2, "Q4_0"),
    (3, "Q4_1"),
    (7, "Q8_0"),
    (8, "Q5_0"),
    (9, "Q5_1"),
    (10, "Q2_K"),
    (11, "Q3_K_S"),
    (12, "Q3_K_M"),
    (13, "Q3_K_L"),
    (14, "Q4_K_S"),
    (15, "Q4_K_M"),
    (16, "Q5_K_S"),
    (17, "Q5_K_M"),
    (18, "Q6_K"),
    (19, "IQ2_XXS"),
    (20, "IQ2_XS"),
    (21, "Q2_K_S"),
    (22, "IQ3_XS"),
    (23, "IQ3_XXS"),
    (24, "IQ1_S"),
    (25, "IQ4_NL"),
    (26, "IQ3_S"),
    (27, "IQ3_M"),
    (28, "IQ2_S"),
    (29, "IQ2_M"),
    (30, "IQ4_XS"),
    (31, "IQ1_M"),
    (32, "BF16"),
];

/// Reads the card of the GGUF model at `path`.
pub fn read(path: &Path) -> Result<ModelCard, GgufError> {
    let file = GgufFile::open(path)?;
    let architecture = file.architecture()?.to_string();
    let context_length = file
        .usize(&format!("{architecture}.context_length"))
        .map(|n| u32::try_from(n).unwrap_or(u32::MAX))?;
    let content = &file.content;
    let quantization = content
        .metadata
        .get("general.file_type")
        .and_then(|v| v.to_u32().ok())
        .and_then(|t| FILE_TYPES.iter().find(|(id, _)| *id == t))
        .map_or_else(|| dominant_dtype(&file), |(_, name)| (*name).to_string());
    let parameters = content
        .tensor_infos
        .values()
        .map(|t| t.shape.elem_count() as u64)
        .sum();
    let template = match content.metadata.get("tokenizer.chat_template") {
        Some(Value::String(s)) => Some(s.as_str()),
        _ => None,
    };
    Ok(ModelCard {
        architecture,
        context_length,
        quantization,
        parameters,
        size_bytes: std::fs::metadata(path)
            .map_err(|source| GgufError::Io {
                path: path.to_path_buf(),
                source,
            })?
            .len(),
        chat_template: template.is_some(),
        tool_format: template.and_then(crate::chat::tool_format_of),
    })
}

/// The tensor type holding the most weights, when the file names no type.
fn dominant_dtype(file: &GgufFile) -> String {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for t in file.content.tensor_infos.values() {
        let name = format!("{:?}", t.ggml_dtype).to_uppercase();
        match counts.iter_mut().find(|(n, _)| *n == name) {
            Some((_, c)) => *c += t.shape.elem_count(),
            None => counts.push((name, t.shape.elem_count())),
        }
    }
    counts
        .into_iter()
        .max_by_key(|(_, c)| *c)
        .map_or_else(|| "unknown".to_string(), |(n, _)| n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_model_card_names_its_architecture_context_and_quantization() {
        let card = read(&inferno_cluster_tests::test_model()).unwrap();
        assert_eq!(card.architecture, "llama");
        assert_eq!(card.context_length, 8192);
        assert_eq!(card.quantization, "Q4_1");
        assert!(
            (100_000_000..200_000_000).contains(&card.parameters),
            "{card:?}"
        );
        assert!(card.chat_template);
        assert_eq!(card.tool_format, None);
    }

    #[test]
    fn qwen_offers_hermes_tool_calls() {
        let card = read(&inferno_cluster_tests::qwen_model()).unwrap();
        assert_eq!(card.architecture, "qwen2");
        assert_eq!(card.quantization, "Q4_K_M");
        assert_eq!(card.size_bytes, 491_400_064);
        assert_eq!(card.context_length, 32768);
        assert_eq!(card.tool_format, Some(protocol::ToolFormat::Hermes));
    }
}
