//! Token ids against llama.cpp's reference data (`tests/data/llamacpp_*.json`),
//! for the per-model tokenizer tests.

use backends::tokenizer::GgufTokenizer;

/// One reference text and the ids llama.cpp gives it.
#[derive(serde::Deserialize)]
pub struct TokenCase {
    /// The text.
    pub text: String,
    /// llama.cpp's ids for it.
    pub ids: Vec<u32>,
}

/// Asserts that `tok` encodes every case to llama.cpp's ids (after removing
/// a leading `strip` id: references taken without BOS) and decodes
/// llama.cpp's ids back to the text; lists every differing text at once.
pub fn assert_ids_equal_llamacpp(tok: &GgufTokenizer, cases: &[TokenCase], strip: Option<u32>) {
    let mut failures = Vec::new();
    for c in cases {
        let ours = tok.encode(&c.text).unwrap();
        let ours = match strip {
            Some(id) => ours.strip_prefix(&[id]).unwrap_or(&ours),
            None => &ours[..],
        };
        if ours != c.ids.as_slice() {
            failures.push(format!(
                "text {:?}\n  llama.cpp {:?}\n  ours      {:?}",
                c.text, c.ids, ours
            ));
        }
        // llama.cpp's ids must also decode back to the text.
        assert_eq!(tok.decode(&c.ids).unwrap(), c.text);
        // A raw API prompt is encoded with all of it literal (special-token
        // text stays text): where the text holds no special token, the ids
        // must be the same as above.
        let literal = tok
            .encode_with_literals(&c.text, std::slice::from_ref(&(0..c.text.len())))
            .unwrap();
        let has_special = c.ids.iter().any(|&id| tok.is_special(id));
        if !has_special && literal != tok.encode(&c.text).unwrap() {
            failures.push(format!(
                "text {:?} encoded as a literal differs:\n  literal {:?}",
                c.text, literal
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} texts differ from llama.cpp:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
