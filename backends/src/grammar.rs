//! Constrained decoding: a request's output format (a JSON Schema, any
//! JSON object, a regular expression or a Lark grammar) compiled by
//! llguidance into a token mask per step, so that only tokens that keep
//! the output valid can be sampled.
//!
//! llguidance was chosen over outlines-core and hand-written GBNF
//! matching: it is what llama.cpp and mistral.rs use, it computes masks
//! lazily from a token trie instead of precompiling an automaton over the
//! whole vocabulary (so a new schema costs milliseconds, not seconds, on
//! 150k-262k token vocabularies), and it covers JSON Schema, regex and
//! Lark in one engine.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use protocol::OutputConstraint;

use crate::tokenizer::GgufTokenizer;

/// Compiled grammars kept per model, so that a repeated schema skips
/// compilation.
const CACHE_ENTRIES: usize = 64;

/// Largest grammar text (schema JSON, regex or Lark) accepted, in bytes.
pub const MAX_GRAMMAR_BYTES: usize = 64 * 1024;

/// Why a constraint could not be compiled or followed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrammarError {
    /// The schema or grammar is malformed or uses something unsupported.
    #[error("invalid {kind}: {message}")]
    Invalid {
        /// `json_schema`, `regex`, `grammar` or `json_object`.
        kind: &'static str,
        /// What is wrong, as the grammar compiler says it.
        message: String,
    },
    /// The grammar engine failed while generating.
    #[error("constrained decoding failed: {0}")]
    Engine(String),
}

/// One model's grammar compiler: its vocabulary as a token trie and a
/// bounded cache of compiled grammars.
pub struct GrammarCompiler {
    factory: ParserFactory,
    eos: u32,
    eog: Arc<[u32]>,
    cache: Mutex<CompiledCache>,
}

#[derive(Default)]
struct CompiledCache {
    entries: HashMap<OutputConstraint, Matcher>,
    order: VecDeque<OutputConstraint>,
}

impl GrammarCompiler {
    /// Builds the token trie of `tokenizer` for a model whose logits have
    /// `vocab_size` entries (ids past the tokenizer's are never allowed).
    pub fn new(tokenizer: &GgufTokenizer, vocab_size: usize) -> Result<Self, GrammarError> {
        let eog: Arc<[u32]> = tokenizer.eog_ids().into();
        let eos = tokenizer
            .eos_id()
            .or_else(|| eog.first().copied())
            .ok_or_else(|| {
                GrammarError::Engine("the model names no end-of-sequence token".into())
            })?;
        let words: Vec<Vec<u8>> = (0..vocab_size)
            .map(|id| {
                let id = u32::try_from(id).unwrap_or(u32::MAX);
                let bytes = tokenizer.token_bytes_ref(id).unwrap_or_default();
                if tokenizer.is_special(id) {
                    // toktrie marks special tokens with a 0xFF prefix: the
                    // grammar never produces them as text.
                    let mut marked = Vec::with_capacity(bytes.len() + 1);
                    marked.push(TokTrie::SPECIAL_TOKEN_MARKER);
                    marked.extend_from_slice(bytes);
                    marked
                } else {
                    bytes.to_vec()
                }
            })
            .collect();
        let vocab = u32::try_from(vocab_size)
            .map_err(|_| GrammarError::Engine(format!("vocabulary of {vocab_size} tokens")))?;
        let mut info = TokRxInfo::new(vocab, eos);
        info.tok_bos = tokenizer.bos_id();
        let trie = TokTrie::from(&info, &words);
        let env: TokEnv = if tokenizer.is_byte_level() {
            Arc::new(ModelTokEnv {
                trie,
                tokenizer: tokenizer.clone(),
            })
        } else {
            Arc::new(ApproximateTokEnv::new(trie))
        };
        let mut factory = ParserFactory::new_simple(&env).map_err(engine)?;
        factory.quiet();
        Ok(Self {
            factory,
            eos,
            eog,
            cache: Mutex::new(CompiledCache::default()),
        })
    }

    /// A fresh matcher for `constraint`, compiled or taken from the cache.
    pub fn compile(&self, constraint: &OutputConstraint) -> Result<TokenConstraint, GrammarError> {
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entries
            .get(constraint)
            .map(Matcher::deep_clone);
        let matcher = match cached {
            Some(m) => m,
            None => {
                let fresh = self.compile_uncached(constraint)?;
                let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
                if !cache.entries.contains_key(constraint) {
                    if cache.order.len() >= CACHE_ENTRIES {
                        if let Some(old) = cache.order.pop_front() {
                            cache.entries.remove(&old);
                        }
                    }
                    cache.order.push_back(constraint.clone());
                    cache.entries.insert(constraint.clone(), fresh.deep_clone());
                }
                fresh
            }
        };
        Ok(TokenConstraint {
            matcher,
            mask: None,
            eos: self.eos,
            eog: self.eog.clone(),
        })
    }

    fn compile_uncached(&self, constraint: &OutputConstraint) -> Result<Matcher, GrammarError> {
        let kind = constraint.kind();
        let invalid = |message: String| GrammarError::Invalid { kind, message };
        let text_len = match constraint {
            OutputConstraint::JsonObject => 0,
            OutputConstraint::JsonSchema(s)
            | OutputConstraint::Regex(s)
            | OutputConstraint::Lark(s) => s.len(),
        };
        if text_len > MAX_GRAMMAR_BYTES {
            return Err(invalid(format!(
                "{text_len} bytes is longer than the limit of {MAX_GRAMMAR_BYTES}"
            )));
        }
        let grammar = match constraint {
            OutputConstraint::JsonObject => {
                TopLevelGrammar::from_json_schema(compact(serde_json::json!({"type": "object"})))
            }
            OutputConstraint::JsonSchema(text) => {
                let schema: serde_json::Value = serde_json::from_str(text)
                    .map_err(|e| invalid(format!("the schema is not JSON: {e}")))?;
                let schema = match schema {
                    serde_json::Value::Bool(true) => serde_json::json!({}),
                    s @ serde_json::Value::Object(_) => s,
                    _ => return Err(invalid("the schema must be a JSON object".into())),
                };
                TopLevelGrammar::from_json_schema(compact(schema))
            }
            OutputConstraint::Regex(rx) => TopLevelGrammar::from_regex(rx),
            OutputConstraint::Lark(lark) => TopLevelGrammar::from_lark(lark.clone()),
        };
        let parser = self
            .factory
            .create_parser(grammar)
            .map_err(|e| invalid(e.to_string()))?;
        let matcher = Matcher::new(Ok(parser));
        match matcher.get_error() {
            Some(message) => Err(invalid(message)),
            None => Ok(matcher),
        }
    }
}

/// One sequence's grammar state: which tokens may come next.
pub struct TokenConstraint {
    matcher: Matcher,
    mask: Option<SimpleVob>,
    eos: u32,
    eog: Arc<[u32]>,
}

impl TokenConstraint {
    /// Computes the mask of the next token now (the engine calls this on a
    /// helper thread while the forward pass runs).
    pub fn prepare_mask(&mut self) {
        if self.mask.is_none() {
            self.mask = self.matcher.compute_mask().ok();
        }
    }

    /// Sets every logit the grammar forbids to minus infinity. End-of-
    /// generation tokens stay allowed only where the grammar may end.
    pub fn apply(&mut self, logits: &mut [f32]) -> Result<(), GrammarError> {
        let mask = match self.mask.take() {
            Some(m) => m,
            None => self.matcher.compute_mask().map_err(engine)?,
        };
        let may_end = mask.is_allowed(self.eos);
        let saved: Vec<(usize, f32)> = self
            .eog
            .iter()
            .filter_map(|&t| logits.get(t as usize).map(|&l| (t as usize, l)))
            .collect();
        let mut any = may_end;
        for (id, logit) in logits.iter_mut().enumerate() {
            let allowed = u32::try_from(id).is_ok_and(|t| mask.is_allowed(t));
            if !allowed {
                *logit = f32::NEG_INFINITY;
            } else {
                any = true;
            }
        }
        for (id, logit) in saved {
            logits[id] = if may_end { logit } else { f32::NEG_INFINITY };
        }
        if !any {
            return Err(GrammarError::Engine(
                "the grammar allows no next token".into(),
            ));
        }
        Ok(())
    }

    /// Advances the grammar by the sampled token (not an end-of-generation
    /// token: those end the sequence).
    pub fn consume(&mut self, token: u32) -> Result<(), GrammarError> {
        self.mask = None;
        self.matcher.consume_token(token).map_err(engine)
    }

    /// Whether the output is complete and nothing more may follow.
    pub fn is_complete(&self) -> bool {
        self.matcher.is_stopped()
    }

    /// The tokens the grammar allows as the only continuation from here
    /// (e.g. the keys and punctuation of a schema between two values), in
    /// the model's own tokenization. They can be appended without a step
    /// each. Empty when nothing is forced, and always for tokenizers whose
    /// tokenization llguidance cannot reproduce (SentencePiece).
    pub fn forced_tokens(&mut self) -> Vec<u32> {
        if self.matcher.is_stopped() {
            return Vec::new();
        }
        self.matcher.compute_ff_tokens()
    }
}

/// The model's own tokenizer for llguidance, so that the tokens it forces
/// are the ones the model would have produced (byte-level BPE only: it
/// tokenizes any text the same way wherever it is cut at a pre-token).
struct ModelTokEnv {
    trie: TokTrie,
    tokenizer: GgufTokenizer,
}

impl TokenizerEnv for ModelTokEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<u32> {
        let Ok(text) = std::str::from_utf8(s) else {
            return self.trie.greedy_tokenize(s);
        };
        // All of the text is literal: special-token text in a grammar's
        // output is text, never a control token.
        let whole = 0..text.len();
        match self
            .tokenizer
            .encode_with_literals(text, std::slice::from_ref(&whole))
        {
            Ok(mut ids) => {
                if self.tokenizer.adds_bos() {
                    if let (Some(bos), Some(&first)) = (self.tokenizer.bos_id(), ids.first()) {
                        if first == bos {
                            ids.remove(0);
                        }
                    }
                }
                ids
            }
            Err(_) => self.trie.greedy_tokenize(s),
        }
    }

    fn tokenize_is_canonical(&self) -> bool {
        true
    }
}

/// JSON written as OpenAI's models write it (`{"a": 1, "b": [2, 3]}`):
/// fixed separators and no free whitespace, so a model cannot spend its
/// tokens on blank lines between values. A schema's own `x-guidance`
/// options win.
fn compact(mut schema: serde_json::Value) -> serde_json::Value {
    if let Some(o) = schema.as_object_mut() {
        o.entry("x-guidance").or_insert_with(|| {
            serde_json::json!({
                "item_separator": ", ",
                "key_separator": ": ",
                "whitespace_flexible": false,
            })
        });
    }
    schema
}

fn engine(e: impl std::fmt::Display) -> GrammarError {
    GrammarError::Engine(e.to_string())
}
