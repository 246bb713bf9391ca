//! Tokenizing text in which some byte ranges are literal: what a user
//! wrote inside a chat message. Special-token text there (`<|im_end|>`,
//! `<start_of_turn>`) is ordinary text, so a message cannot close its turn
//! and open a system turn of its own; only what the chat template writes
//! becomes special tokens. Runs between the template's special tokens are
//! tokenized exactly as a whole prompt would be (the `tokenizers` crate
//! also splits at special tokens first), so prompts without such text get
//! the same ids as before.

use std::ops::Range;

use aho_corasick::{AhoCorasick, MatchKind};
use tokenizers::{Model, OffsetType, PreTokenizedString, PreTokenizer, Tokenizer};

use super::{tk_err, TokenizerError};

/// Whether `span` shares a byte with any of `literals`.
pub(super) fn overlaps(span: Range<usize>, literals: &[Range<usize>]) -> bool {
    literals
        .iter()
        .any(|r| span.start < r.end && r.start < span.end)
}

/// Finds special-token text (the BPE vocabulary's control and
/// user-defined tokens), leftmost-longest as the `tokenizers` crate does.
#[derive(Clone)]
pub(super) struct SpecialMatcher {
    ac: AhoCorasick,
    ids: Vec<u32>,
}

impl SpecialMatcher {
    /// The matcher of the tokens flagged `special`; `None` when there are none.
    pub(super) fn new(tokens: &[String], special: &[bool]) -> Result<Option<Self>, TokenizerError> {
        let ids: Vec<u32> = (0..tokens.len() as u32)
            .filter(|&i| special[i as usize] && !tokens[i as usize].is_empty())
            .collect();
        if ids.is_empty() {
            return Ok(None);
        }
        let ac = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(ids.iter().map(|&i| tokens[i as usize].as_str()))
            .map_err(|e| TokenizerError::InvalidMetadata(e.to_string()))?;
        Ok(Some(Self { ac, ids }))
    }
}

/// Byte-level BPE of `text` with no special-token matching at all.
fn bpe_plain(t: &Tokenizer, text: &str, out: &mut Vec<u32>) -> Result<(), TokenizerError> {
    let mut pts = PreTokenizedString::from(text);
    if let Some(p) = t.get_pre_tokenizer() {
        p.pre_tokenize(&mut pts).map_err(tk_err)?;
    }
    let model = t.get_model();
    pts.tokenize(|n| model.tokenize(n.get())).map_err(tk_err)?;
    let enc = pts
        .into_encoding(None, 0, OffsetType::Byte)
        .map_err(tk_err)?;
    out.extend_from_slice(enc.get_ids());
    Ok(())
}

/// Appends the BPE ids of `text`, special tokens recognized only outside
/// `literals`.
pub(super) fn bpe_encode_outside(
    t: &Tokenizer,
    specials: Option<&SpecialMatcher>,
    text: &str,
    literals: &[Range<usize>],
    out: &mut Vec<u32>,
) -> Result<(), TokenizerError> {
    let mut at = 0;
    if let Some(sm) = specials {
        for m in sm.ac.find_iter(text) {
            if overlaps(m.start()..m.end(), literals) {
                continue;
            }
            if m.start() > at {
                bpe_plain(t, &text[at..m.start()], out)?;
            }
            out.push(sm.ids[m.pattern().as_usize()]);
            at = m.end();
        }
    }
    if at < text.len() {
        bpe_plain(t, &text[at..], out)?;
    }
    Ok(())
}
