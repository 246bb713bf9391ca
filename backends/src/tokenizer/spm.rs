//! The SentencePiece-style tokenizer of GGUF files with
//! `tokenizer.ggml.model = "llama"` (Gemma, Llama 2, TinyLlama), as llama.cpp
//! implements it: spaces become `▁`, the text is split into characters, and
//! the adjacent pair whose concatenation is the highest-scoring vocabulary
//! entry is merged, again and again (ties: leftmost first); characters left
//! outside the vocabulary become byte tokens (`<0xXX>`). Control and
//! user-defined tokens are cut out of the text first and encoded as
//! themselves.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::ops::Range;

use aho_corasick::{AhoCorasick, MatchKind};

use super::TokenizerError;

/// The visible stand-in for a space (U+2581).
const SPACE: &str = "\u{2581}";

/// A SentencePiece vocabulary with scores.
#[derive(Clone)]
pub(super) struct SpmModel {
    /// Token text to id (the first id wins on duplicates, as in llama.cpp).
    vocab: HashMap<String, u32>,
    scores: Vec<f32>,
    /// The `<0xXX>` token of every byte, where the vocabulary has one.
    byte_tokens: [Option<u32>; 256],
    unk: Option<u32>,
    /// Control and user-defined tokens, matched in the text before anything else.
    specials: Option<AhoCorasick>,
    special_ids: Vec<u32>,
    /// Prefix a space to the text (and after every special token).
    add_space_prefix: bool,
}

/// A merge candidate: symbols `left` and `right` whose text is a token of `score`.
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bigram {
    /// Higher score first; on a tie, the leftmost pair.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

/// A run of the text: `len == 0` once merged into its left neighbour.
#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

impl SpmModel {
    /// Builds the model from the vocabulary, scores and token types.
    pub(super) fn new(
        tokens: &[&str],
        scores: Vec<f32>,
        special: &[bool],
        is_byte: &[bool],
        unk: Option<u32>,
        add_space_prefix: bool,
    ) -> Result<Self, TokenizerError> {
        let mut vocab = HashMap::with_capacity(tokens.len());
        let mut byte_tokens = [None; 256];
        for (id, t) in tokens.iter().enumerate() {
            vocab.entry((*t).to_string()).or_insert(id as u32);
            if is_byte[id] {
                if let Some(b) = parse_byte_token(t) {
                    byte_tokens[b as usize].get_or_insert(id as u32);
                }
            }
        }
        let mut special_ids: Vec<u32> = (0..tokens.len() as u32)
            .filter(|&id| special[id as usize] && !tokens[id as usize].is_empty())
            .collect();
        // Longest first, as llama.cpp orders its special-token cache.
        special_ids.sort_by_key(|&id| std::cmp::Reverse(tokens[id as usize].len()));
        let specials = if special_ids.is_empty() {
            None
        } else {
            Some(
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(special_ids.iter().map(|&id| tokens[id as usize]))
                    .map_err(|e| TokenizerError::InvalidMetadata(e.to_string()))?,
            )
        };
        Ok(Self {
            vocab,
            scores,
            byte_tokens,
            unk,
            specials,
            special_ids,
            add_space_prefix,
        })
    }

    /// The id of a token's text.
    pub(super) fn token_id(&self, text: &str) -> Option<u32> {
        self.vocab.get(text).copied()
    }

    /// Appends the ids of `text` to `out`.
    pub(super) fn encode(&self, text: &str, out: &mut Vec<u32>) {
        self.encode_outside(text, &[], out);
    }

    /// Appends the ids of `text` to `out`, reading special-token text as
    /// special only outside the byte ranges `literals` (there it is text).
    pub(super) fn encode_outside(&self, text: &str, literals: &[Range<usize>], out: &mut Vec<u32>) {
        let mut prev_special = true;
        let mut at = 0;
        if let Some(ac) = &self.specials {
            for m in ac.find_iter(text) {
                if super::literal::overlaps(m.start()..m.end(), literals) {
                    continue;
                }
                if m.start() > at {
                    self.encode_raw(&text[at..m.start()], prev_special, out);
                }
                out.push(self.special_ids[m.pattern().as_usize()]);
                prev_special = true;
                at = m.end();
            }
        }
        if at < text.len() {
            self.encode_raw(&text[at..], prev_special, out);
        }
    }

    /// Encodes text that holds no special token.
    fn encode_raw(&self, raw: &str, prev_special: bool, out: &mut Vec<u32>) {
        let mut text = String::with_capacity(raw.len() + 3);
        if self.add_space_prefix && prev_special {
            text.push(' ');
        }
        text.push_str(raw);
        let text = text.replace(' ', SPACE);
        let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
        for (i, (start, c)) in text.char_indices().enumerate() {
            symbols.push(Symbol {
                start,
                len: c.len_utf8(),
                prev: i.checked_sub(1),
                next: Some(i + 1),
            });
        }
        if let Some(last) = symbols.last_mut() {
            last.next = None;
        }
        let mut queue = BinaryHeap::new();
        let try_add = |queue: &mut BinaryHeap<Bigram>, symbols: &[Symbol], l: usize, r: usize| {
            let (a, b) = (symbols[l], symbols[r]);
            let s = &text[a.start..b.start + b.len];
            if let Some(&id) = self.vocab.get(s) {
                if let Some(&score) = self.scores.get(id as usize) {
                    queue.push(Bigram {
                        score,
                        left: l,
                        right: r,
                        size: s.len(),
                    });
                }
            }
        };
        for i in 1..symbols.len() {
            try_add(&mut queue, &symbols, i - 1, i);
        }
        while let Some(bg) = queue.pop() {
            let (l, r) = (symbols[bg.left], symbols[bg.right]);
            // One of the two was merged since: the pair is stale.
            if l.len == 0 || r.len == 0 || l.len + r.len != bg.size {
                continue;
            }
            symbols[bg.left].len += r.len;
            symbols[bg.right].len = 0;
            symbols[bg.left].next = r.next;
            if let Some(n) = r.next {
                symbols[n].prev = Some(bg.left);
            }
            if let Some(p) = symbols[bg.left].prev {
                try_add(&mut queue, &symbols, p, bg.left);
            }
            if let Some(n) = symbols[bg.left].next {
                try_add(&mut queue, &symbols, bg.left, n);
            }
        }
        let mut i = if symbols.is_empty() { None } else { Some(0) };
        while let Some(k) = i {
            let sym = symbols[k];
            let piece = &text[sym.start..sym.start + sym.len];
            match self.vocab.get(piece) {
                Some(&id) => out.push(id),
                None => {
                    for b in piece.bytes() {
                        out.extend(self.byte_tokens[b as usize].or(self.unk));
                    }
                }
            }
            i = sym.next;
        }
    }
}

/// The byte of a `<0xXX>` token.
pub(super) fn parse_byte_token(t: &str) -> Option<u8> {
    let hex = t.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// The bytes a token stands for: its byte for `<0xXX>` tokens, else its
/// text with `▁` as a space.
pub(super) fn token_bytes(t: &str, is_byte: bool) -> Vec<u8> {
    if is_byte {
        if let Some(b) = parse_byte_token(t) {
            return vec![b];
        }
    }
    t.replace(SPACE, " ").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(add_space_prefix: bool) -> SpmModel {
        // ids: 0 <unk>, 1 <s>, 2..4 bytes, then pieces with scores.
        let tokens = [
            "<unk>", "<s>", "<0x41>", "<0x0A>", "<0xC3>", "▁", "a", "b", "ab", "▁ab", "c", "bc",
        ];
        let scores = vec![
            0.0, 0.0, 0.0, 0.0, 0.0, -1.0, -2.0, -2.0, -0.5, -0.1, -2.0, -0.4,
        ];
        let special = [
            false, true, false, false, false, false, false, false, false, false, false, false,
        ];
        let is_byte = [
            false, false, true, true, true, false, false, false, false, false, false, false,
        ];
        SpmModel::new(
            &tokens,
            scores,
            &special,
            &is_byte,
            Some(0),
            add_space_prefix,
        )
        .unwrap()
    }

    fn enc(m: &SpmModel, s: &str) -> Vec<u32> {
        let mut out = Vec::new();
        m.encode(s, &mut out);
        out
    }

    #[test]
    fn highest_scoring_merge_wins_and_ties_go_left() {
        let m = model(false);
        // "abc": "bc" (-0.4) beats "ab" (-0.5).
        assert_eq!(enc(&m, "abc"), vec![6, 11]);
        // " ab": "ab" first (-0.5 beats "▁a", absent), then "▁ab" (-0.1).
        assert_eq!(enc(&m, " ab"), vec![9]);
    }

    #[test]
    fn space_prefix_and_specials() {
        let m = model(true);
        assert_eq!(enc(&m, "ab"), vec![9]);
        assert_eq!(enc(&m, "<s>ab"), vec![1, 9]);
        assert_eq!(enc(&model(false), "<s>ab"), vec![1, 8]);
    }

    #[test]
    fn unknown_characters_fall_back_to_bytes_or_unk() {
        let m = model(false);
        // 'A' has a byte token; 'é' (C3 A9) has only its first byte's.
        assert_eq!(enc(&m, "A"), vec![2]);
        assert_eq!(enc(&m, "é"), vec![4, 0]);
        assert_eq!(token_bytes("<0x0A>", true), b"\n");
        assert_eq!(token_bytes("▁ab", false), b" ab");
    }
}
