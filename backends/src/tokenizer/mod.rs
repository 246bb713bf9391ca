//! Tokenizer built from a GGUF file's own metadata.
//!
//! GGUF files that come from llama.cpp's converters carry the whole tokenizer in
//! their metadata (`tokenizer.ggml.*`).  [`GgufTokenizer`] turns that metadata into a
//! [`tokenizers::Tokenizer`] that reproduces llama.cpp's tokenization for byte-level
//! BPE (`tokenizer.ggml.model = "gpt2"`) vocabularies, and keeps a per-token byte table
//! so that detokenization ([`GgufTokenizer::token_bytes`], [`StreamDecoder`]) never has
//! to go through the `tokenizers` crate.
//!
//! candle's `TokenizerFromGguf` is deliberately not used: it adds a prefix space and
//! reads the wrong unknown-token key for SmolLM2-style models.

mod literal;
mod spm;

use std::collections::HashMap;

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::byte_level::ByteLevel as ByteLevelProcessor;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

const KEY_MODEL: &str = "tokenizer.ggml.model";
const KEY_PRE: &str = "tokenizer.ggml.pre";
const KEY_TOKENS: &str = "tokenizer.ggml.tokens";
const KEY_TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
const KEY_MERGES: &str = "tokenizer.ggml.merges";
const KEY_BOS: &str = "tokenizer.ggml.bos_token_id";
const KEY_EOS: &str = "tokenizer.ggml.eos_token_id";
const KEY_UNK: &str = "tokenizer.ggml.unknown_token_id";
const KEY_EOT: &str = "tokenizer.ggml.eot_token_id";
const KEY_EOM: &str = "tokenizer.ggml.eom_token_id";
const KEY_ADD_BOS: &str = "tokenizer.ggml.add_bos_token";

/// GGUF `token_type` value of a normal token.
const TOKEN_TYPE_NORMAL: i64 = 1;
/// GGUF `token_type` value of a control token (`<|im_start|>`, `<|endoftext|>`, ...).
const TOKEN_TYPE_CONTROL: i64 = 3;
/// GGUF `token_type` value of a user-defined (added) token.
const TOKEN_TYPE_USER_DEFINED: i64 = 4;
/// GGUF `token_type` value of a byte token (`<0x0A>`).
const TOKEN_TYPE_BYTE: i64 = 6;
const KEY_SCORES: &str = "tokenizer.ggml.scores";
const KEY_ADD_SPACE_PREFIX: &str = "tokenizer.ggml.add_space_prefix";

/// Token texts that llama.cpp treats as end-of-generation when they are present in the
/// vocabulary (see `special_eog_ids` in llama.cpp's `llama-vocab.cpp`).
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "<|end_of_text|>",
    "<end_of_utterance>",
];

/// The GPT-2 style split used by `gpt2`/`smollm` pre-tokenizers in llama.cpp.
const GPT2_REGEX: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// The llama3 split (llama.cpp's adaptation of the tokenizer.json regex).
const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The qwen2 split: the llama3 one with digits taken one at a time.
const QWEN2_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The regex sequence llama.cpp applies for `tokenizer.ggml.pre = "default"` (or missing).
const DEFAULT_REGEXES: &[&str] = &[
    r"[\p{P}\$\+<=>\^~\|]+",
    GPT2_REGEX,
    r"\p{N}+",
    r"[0-9][0-9][0-9]",
];

/// Errors from building or using a [`GgufTokenizer`].
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A required metadata key is absent from the GGUF file.
    #[error("GGUF metadata key `{0}` is missing")]
    MissingKey(String),
    /// A metadata key is present but holds a value of the wrong type.
    #[error("GGUF metadata key `{key}` has the wrong type: expected {expected}, found {found}")]
    WrongType {
        /// The metadata key.
        key: String,
        /// What was expected, in words.
        expected: &'static str,
        /// What was found (GGUF value type).
        found: String,
    },
    /// `tokenizer.ggml.model` names a tokenizer family that is not implemented.
    #[error(
        "unsupported tokenizer model `{0}`: byte-level BPE (`gpt2`) and SentencePiece \
         (`llama`) are supported"
    )]
    UnsupportedModel(String),
    /// `tokenizer.ggml.pre` names a pre-tokenizer that is not implemented.
    #[error(
        "unsupported pre-tokenizer `{0}` (tokenizer.ggml.pre); supported: smollm, gpt2, gpt-2, \
         default, llama-bpe, llama3, llama-v3, qwen2"
    )]
    UnsupportedPreTokenizer(String),
    /// The metadata is present and well-typed but inconsistent (bad merge, id out of range, ...).
    #[error("invalid tokenizer metadata: {0}")]
    InvalidMetadata(String),
    /// A token id outside the vocabulary was passed in.
    #[error("token id {id} is out of range (vocabulary has {vocab_size} tokens)")]
    UnknownTokenId {
        /// The offending id.
        id: u32,
        /// Size of the vocabulary.
        vocab_size: usize,
    },
    /// The underlying `tokenizers` library reported an error.
    #[error("tokenizer error: {0}")]
    Tokenizers(String),
}

/// Which pre-tokenization scheme a GGUF asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PreKind {
    /// `smollm`: individual digits, then the GPT-2 regex.
    SmolLm,
    /// `gpt2` / `gpt-2`: the GPT-2 regex.
    Gpt2,
    /// `default` (or missing): llama.cpp's fallback regex sequence.
    Default,
    /// `llama-bpe` / `llama3` / `llama-v3`: the llama3 regex, merges ignored for whole words.
    Llama3,
    /// `qwen2`: the llama3 regex with single digits.
    Qwen2,
}

impl PreKind {
    fn from_name(name: Option<&str>) -> Result<Self, TokenizerError> {
        match name {
            None | Some("default") => Ok(Self::Default),
            Some("smollm") => Ok(Self::SmolLm),
            Some("gpt2") | Some("gpt-2") => Ok(Self::Gpt2),
            Some("llama-bpe") | Some("llama3") | Some("llama-v3") => Ok(Self::Llama3),
            Some("qwen2") => Ok(Self::Qwen2),
            Some(other) => Err(TokenizerError::UnsupportedPreTokenizer(other.to_string())),
        }
    }
}

/// A tokenizer reconstructed from a GGUF file's `tokenizer.ggml.*` metadata.
///
/// Cheap to share: wrap it in an `Arc` or clone it (the clone copies the vocabulary).
#[derive(Clone)]
pub struct GgufTokenizer {
    inner: Inner,
    /// Vocabulary strings, indexed by id.
    tokens: Vec<String>,
    /// Raw bytes of each token (byte-level decoded; special tokens as their UTF-8 text).
    bytes: Vec<Vec<u8>>,
    /// Whether each token is a control or user-defined token.
    special: Vec<bool>,
    bos: Option<u32>,
    eos: Option<u32>,
    eog: Vec<u32>,
    add_bos: bool,
    /// Special-token text of a BPE vocabulary (SentencePiece has its own).
    bpe_specials: Option<literal::SpecialMatcher>,
}

/// The tokenization model proper.
#[derive(Clone)]
enum Inner {
    /// Byte-level BPE with merges (`gpt2`), by the `tokenizers` crate.
    Bpe(Box<Tokenizer>),
    /// SentencePiece with scores (`llama`).
    Spm(Box<spm::SpmModel>),
}

impl std::fmt::Debug for GgufTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufTokenizer")
            .field("vocab_size", &self.tokens.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("eog", &self.eog)
            .field("add_bos", &self.add_bos)
            .finish_non_exhaustive()
    }
}

fn type_name(v: &Value) -> String {
    format!("{:?}", v.value_type())
}

fn get_string<'a>(content: &'a Content, key: &str) -> Result<Option<&'a str>, TokenizerError> {
    match content.metadata.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(v) => Err(TokenizerError::WrongType {
            key: key.to_string(),
            expected: "string",
            found: type_name(v),
        }),
    }
}

fn value_as_i64(v: &Value) -> Option<i64> {
    match v {
        Value::U8(x) => Some(i64::from(*x)),
        Value::I8(x) => Some(i64::from(*x)),
        Value::U16(x) => Some(i64::from(*x)),
        Value::I16(x) => Some(i64::from(*x)),
        Value::U32(x) => Some(i64::from(*x)),
        Value::I32(x) => Some(i64::from(*x)),
        Value::U64(x) => i64::try_from(*x).ok(),
        Value::I64(x) => Some(*x),
        _ => None,
    }
}

fn get_bool(content: &Content, key: &str) -> Result<Option<bool>, TokenizerError> {
    match content.metadata.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(TokenizerError::WrongType {
            key: key.to_string(),
            expected: "bool",
            found: type_name(v),
        }),
    }
}

/// Reads an optional token id; negative values (llama.cpp's "none") read as `None`.
fn get_token_id(
    content: &Content,
    key: &str,
    vocab_size: usize,
) -> Result<Option<u32>, TokenizerError> {
    let Some(v) = content.metadata.get(key) else {
        return Ok(None);
    };
    let id = value_as_i64(v).ok_or_else(|| TokenizerError::WrongType {
        key: key.to_string(),
        expected: "integer token id",
        found: type_name(v),
    })?;
    if id < 0 {
        return Ok(None);
    }
    match u32::try_from(id) {
        Ok(id) if (id as usize) < vocab_size => Ok(Some(id)),
        _ => Err(TokenizerError::InvalidMetadata(format!(
            "`{key}` = {id} is outside the vocabulary ({vocab_size} tokens)"
        ))),
    }
}

fn get_array<'a>(content: &'a Content, key: &str) -> Result<Option<&'a [Value]>, TokenizerError> {
    match content.metadata.get(key) {
        None => Ok(None),
        Some(Value::Array(a)) => Ok(Some(a.as_slice())),
        Some(v) => Err(TokenizerError::WrongType {
            key: key.to_string(),
            expected: "array",
            found: type_name(v),
        }),
    }
}

fn get_string_array<'a>(
    content: &'a Content,
    key: &str,
) -> Result<Option<Vec<&'a str>>, TokenizerError> {
    let Some(arr) = get_array(content, key)? else {
        return Ok(None);
    };
    arr.iter()
        .map(|v| match v {
            Value::String(s) => Ok(s.as_str()),
            other => Err(TokenizerError::WrongType {
                key: key.to_string(),
                expected: "array of strings",
                found: format!("array containing {}", type_name(other)),
            }),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// The inverse of GPT-2's `bytes_to_unicode`: maps each of the 256 "visible" chars back
/// to the byte it stands for.
fn gpt2_unicode_to_byte() -> HashMap<char, u8> {
    let mut map = HashMap::with_capacity(256);
    let mut n = 0u32;
    for b in 0..=255u8 {
        let visible = (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
        let c = if visible {
            char::from(b)
        } else {
            let c = char::from_u32(256 + n).unwrap_or('\u{FFFD}');
            n += 1;
            c
        };
        map.insert(c, b);
    }
    map
}

/// Byte-level decodes one vocabulary string; strings containing chars outside the
/// GPT-2 alphabet are taken as their raw UTF-8 (what the `tokenizers` decoder does).
fn byte_level_decode(text: &str, map: &HashMap<char, u8>) -> Vec<u8> {
    text.chars()
        .map(|c| map.get(&c).copied())
        .collect::<Option<Vec<u8>>>()
        .unwrap_or_else(|| text.as_bytes().to_vec())
}

fn tk_err(e: impl std::fmt::Display) -> TokenizerError {
    TokenizerError::Tokenizers(e.to_string())
}

fn isolated_split(regex: &str) -> Result<PreTokenizerWrapper, TokenizerError> {
    Split::new(
        SplitPattern::Regex(regex.to_string()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map(PreTokenizerWrapper::from)
    .map_err(tk_err)
}

fn pre_tokenizer(kind: PreKind) -> Result<PreTokenizerWrapper, TokenizerError> {
    // ByteLevel's built-in regex is exactly GPT2_REGEX.
    let byte_level_regex = ByteLevel::new(false, true, true);
    let byte_level_plain = ByteLevel::new(false, true, false);
    let seq: Vec<PreTokenizerWrapper> = match kind {
        PreKind::SmolLm => vec![Digits::new(true).into(), byte_level_regex.into()],
        PreKind::Gpt2 => vec![byte_level_regex.into()],
        PreKind::Llama3 => vec![isolated_split(LLAMA3_REGEX)?, byte_level_plain.into()],
        PreKind::Qwen2 => vec![isolated_split(QWEN2_REGEX)?, byte_level_plain.into()],
        PreKind::Default => {
            let mut v = DEFAULT_REGEXES
                .iter()
                .map(|r| isolated_split(r))
                .collect::<Result<Vec<_>, _>>()?;
            v.push(byte_level_plain.into());
            v
        }
    };
    Ok(Sequence::new(seq).into())
}

/// `tokenizer.ggml.token_type`, one per token (all normal when absent).
fn token_types(content: &Content, n: usize) -> Result<Vec<i64>, TokenizerError> {
    let Some(arr) = get_array(content, KEY_TOKEN_TYPE)? else {
        return Ok(vec![TOKEN_TYPE_NORMAL; n]);
    };
    if arr.len() != n {
        return Err(TokenizerError::InvalidMetadata(format!(
            "`{KEY_TOKEN_TYPE}` has {} entries but `{KEY_TOKENS}` has {n}",
            arr.len()
        )));
    }
    arr.iter()
        .map(|v| {
            value_as_i64(v).ok_or_else(|| TokenizerError::WrongType {
                key: KEY_TOKEN_TYPE.to_string(),
                expected: "array of integers",
                found: format!("array containing {}", type_name(v)),
            })
        })
        .collect()
}

/// Control and user-defined tokens: matched in text as themselves.
fn special_flags(types: &[i64]) -> Vec<bool> {
    types
        .iter()
        .map(|t| *t == TOKEN_TYPE_CONTROL || *t == TOKEN_TYPE_USER_DEFINED)
        .collect()
}

/// The end-of-generation ids: the named ones plus tokens whose text
/// llama.cpp treats as end of generation; sorted, deduplicated.
fn eog_ids(tokens: &[&str], named: impl Iterator<Item = u32>) -> Vec<u32> {
    let mut eog: Vec<u32> = named.collect();
    for (id, tok) in tokens.iter().enumerate() {
        if EOG_TEXTS.contains(tok) {
            eog.push(id as u32);
        }
    }
    eog.sort_unstable();
    eog.dedup();
    eog
}

/// What both tokenizer models read from the metadata: the vocabulary, its
/// token types and the special ids.
struct VocabMeta<'a> {
    tokens: Vec<&'a str>,
    types: Vec<i64>,
    special: Vec<bool>,
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    eot: Option<u32>,
    eom: Option<u32>,
}

impl<'a> VocabMeta<'a> {
    fn read(content: &'a Content) -> Result<Self, TokenizerError> {
        let tokens = get_string_array(content, KEY_TOKENS)?
            .ok_or_else(|| TokenizerError::MissingKey(KEY_TOKENS.to_string()))?;
        if tokens.is_empty() {
            return Err(TokenizerError::InvalidMetadata(format!(
                "`{KEY_TOKENS}` is empty"
            )));
        }
        let n = tokens.len();
        if u32::try_from(n).is_err() {
            return Err(TokenizerError::InvalidMetadata(format!(
                "vocabulary of {n} tokens does not fit u32 ids"
            )));
        }
        let types = token_types(content, n)?;
        let special = special_flags(&types);
        Ok(Self {
            bos: get_token_id(content, KEY_BOS, n)?,
            eos: get_token_id(content, KEY_EOS, n)?,
            unk: get_token_id(content, KEY_UNK, n)?,
            eot: get_token_id(content, KEY_EOT, n)?,
            eom: get_token_id(content, KEY_EOM, n)?,
            tokens,
            types,
            special,
        })
    }

    /// `tokenizer.ggml.add_bos_token`, `default` when absent; refused when
    /// true without a BOS id.
    fn add_bos(&self, content: &Content, default: bool) -> Result<bool, TokenizerError> {
        let add_bos = get_bool(content, KEY_ADD_BOS)?.unwrap_or(default);
        if add_bos && self.bos.is_none() {
            return Err(TokenizerError::InvalidMetadata(format!(
                "`{KEY_ADD_BOS}` is true but `{KEY_BOS}` is missing"
            )));
        }
        Ok(add_bos)
    }

    /// The tokenizer around `inner`, with each token's raw bytes.
    fn into_tokenizer(
        self,
        inner: Inner,
        bytes: Vec<Vec<u8>>,
        add_bos: bool,
    ) -> Result<GgufTokenizer, TokenizerError> {
        let named = self.eos.into_iter().chain(self.eot).chain(self.eom);
        let tokens: Vec<String> = self.tokens.iter().map(|t| (*t).to_string()).collect();
        let bpe_specials = match inner {
            Inner::Bpe(_) => literal::SpecialMatcher::new(&tokens, &self.special)?,
            Inner::Spm(_) => None,
        };
        Ok(GgufTokenizer {
            inner,
            eog: eog_ids(&self.tokens, named),
            tokens,
            bytes,
            special: self.special,
            bos: self.bos,
            eos: self.eos,
            add_bos,
            bpe_specials,
        })
    }
}

impl GgufTokenizer {
    /// The SentencePiece tokenizer (`tokenizer.ggml.model = "llama"`).
    fn spm_from_gguf(content: &Content) -> Result<Self, TokenizerError> {
        let meta = VocabMeta::read(content)?;
        let n = meta.tokens.len();
        let scores: Vec<f32> = match get_array(content, KEY_SCORES)? {
            Some(arr) if arr.len() == n => arr
                .iter()
                .map(|v| match v {
                    Value::F32(x) => Ok(*x),
                    other => Err(TokenizerError::WrongType {
                        key: KEY_SCORES.to_string(),
                        expected: "array of f32",
                        found: format!("array containing {}", type_name(other)),
                    }),
                })
                .collect::<Result<_, _>>()?,
            Some(arr) => {
                return Err(TokenizerError::InvalidMetadata(format!(
                    "`{KEY_SCORES}` has {} entries but `{KEY_TOKENS}` has {n}",
                    arr.len()
                )))
            }
            None => return Err(TokenizerError::MissingKey(KEY_SCORES.to_string())),
        };
        let is_byte: Vec<bool> = meta.types.iter().map(|t| *t == TOKEN_TYPE_BYTE).collect();
        // llama.cpp's defaults for SentencePiece vocabularies.
        let add_bos = meta.add_bos(content, true)?;
        let add_space_prefix = get_bool(content, KEY_ADD_SPACE_PREFIX)?.unwrap_or(true);
        let model = spm::SpmModel::new(
            &meta.tokens,
            scores,
            &meta.special,
            &is_byte,
            meta.unk,
            add_space_prefix,
        )?;
        let bytes = meta
            .tokens
            .iter()
            .zip(&meta.special)
            .zip(&is_byte)
            .map(|((t, s), b)| {
                if *s {
                    t.as_bytes().to_vec()
                } else {
                    spm::token_bytes(t, *b)
                }
            })
            .collect();
        meta.into_tokenizer(Inner::Spm(Box::new(model)), bytes, add_bos)
    }

    /// Builds the tokenizer from a GGUF file's metadata.
    ///
    /// Supports `tokenizer.ggml.model = "gpt2"` (byte-level BPE) with the pre-tokenizers
    /// `smollm`, `gpt2`/`gpt-2`, `default` (also used when the key is absent),
    /// `llama-bpe`/`llama3`/`llama-v3` and `qwen2`.  Control (type 3) and user-defined (type 4) tokens
    /// become special added tokens, so their text inside a prompt encodes to one token.
    pub fn from_gguf(content: &Content) -> Result<Self, TokenizerError> {
        let model = get_string(content, KEY_MODEL)?
            .ok_or_else(|| TokenizerError::MissingKey(KEY_MODEL.to_string()))?;
        match model {
            "gpt2" => {}
            "llama" => return Self::spm_from_gguf(content),
            other => return Err(TokenizerError::UnsupportedModel(other.to_string())),
        }
        let pre = PreKind::from_name(get_string(content, KEY_PRE)?)?;

        let meta = VocabMeta::read(content)?;
        let (tokens, special) = (&meta.tokens, &meta.special);
        let merges_raw = get_string_array(content, KEY_MERGES)?
            .ok_or_else(|| TokenizerError::MissingKey(KEY_MERGES.to_string()))?;
        let merges = merges_raw
            .iter()
            .enumerate()
            .map(|(i, m)| {
                // Same rule as llama.cpp: split at the first space after the first byte.
                let pos = m
                    .char_indices()
                    .skip(1)
                    .find(|(_, c)| *c == ' ')
                    .map(|(p, _)| p)
                    .ok_or_else(|| {
                        TokenizerError::InvalidMetadata(format!(
                            "merge #{i} {m:?} has no separating space"
                        ))
                    })?;
                Ok((m[..pos].to_string(), m[pos + 1..].to_string()))
            })
            .collect::<Result<Vec<_>, TokenizerError>>()?;

        let add_bos = meta.add_bos(content, pre == PreKind::Llama3)?;

        // Vocabulary: on duplicate strings the first id wins (as in llama.cpp's token_to_id).
        let mut vocab = Vocab::default();
        for (id, tok) in tokens.iter().enumerate() {
            vocab.entry((*tok).to_string()).or_insert(id as u32);
        }
        let mut builder = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(pre == PreKind::Llama3);
        if let Some(unk) = meta.unk {
            builder = builder.unk_token(tokens[unk as usize].to_string());
        }
        let bpe = builder.build().map_err(tk_err)?;

        let mut inner = Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(pre_tokenizer(pre)?));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        inner.with_post_processor(Some(ByteLevelProcessor::new(false, true, false)));
        let added: Vec<AddedToken> = tokens
            .iter()
            .zip(special)
            .filter(|(t, s)| **s && !t.is_empty())
            .map(|(t, _)| AddedToken::from(t.to_string(), true))
            .collect();
        inner.add_special_tokens(added).map_err(tk_err)?;

        let map = gpt2_unicode_to_byte();
        let bytes = tokens
            .iter()
            .zip(special)
            .map(|(t, s)| {
                if *s {
                    t.as_bytes().to_vec()
                } else {
                    byte_level_decode(t, &map)
                }
            })
            .collect();
        meta.into_tokenizer(Inner::Bpe(Box::new(inner)), bytes, add_bos)
    }

    /// Encodes `text` to token ids.
    ///
    /// Special-token text in `text` (e.g. `<|im_start|>`) is parsed as the special token.
    /// A BOS token is prepended only when the GGUF asks for it (`add_bos_token`).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if self.add_bos {
            out.extend(self.bos);
        }
        match &self.inner {
            Inner::Bpe(t) => {
                let enc = t.encode_fast(text, false).map_err(tk_err)?;
                out.extend_from_slice(enc.get_ids());
            }
            Inner::Spm(m) => m.encode(text, &mut out),
        }
        Ok(out)
    }

    /// Encodes `text` like [`Self::encode`], except that inside the byte
    /// ranges `literals` (what users wrote) special-token text is ordinary
    /// text: only special tokens entirely outside them are special.
    pub fn encode_with_literals(
        &self,
        text: &str,
        literals: &[std::ops::Range<usize>],
    ) -> Result<Vec<u32>, TokenizerError> {
        if literals.is_empty() {
            return self.encode(text);
        }
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if self.add_bos {
            out.extend(self.bos);
        }
        match &self.inner {
            Inner::Bpe(t) => literal::bpe_encode_outside(
                t,
                self.bpe_specials.as_ref(),
                text,
                literals,
                &mut out,
            )?,
            Inner::Spm(m) => m.encode_outside(text, literals, &mut out),
        }
        Ok(out)
    }

    /// Decodes token ids to text, keeping special tokens (as their text).
    ///
    /// Invalid UTF-8 (e.g. a sequence cut in the middle of a character) is replaced
    /// with U+FFFD.  Fails on an id outside the vocabulary.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        let mut buf = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            let b = self
                .bytes
                .get(id as usize)
                .ok_or(TokenizerError::UnknownTokenId {
                    id,
                    vocab_size: self.bytes.len(),
                })?;
            buf.extend_from_slice(b);
        }
        Ok(match String::from_utf8(buf) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    /// Raw bytes of one token: byte-level decoded for normal tokens, the UTF-8 text for
    /// special tokens.  `None` for ids outside the vocabulary.
    pub fn token_bytes(&self, id: u32) -> Option<Vec<u8>> {
        self.token_bytes_ref(id).map(<[u8]>::to_vec)
    }

    /// Borrowing variant of [`token_bytes`](Self::token_bytes).
    pub fn token_bytes_ref(&self, id: u32) -> Option<&[u8]> {
        self.bytes.get(id as usize).map(Vec::as_slice)
    }

    /// Whether [`encode`](Self::encode) puts a BOS token first.
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether this is a byte-level BPE vocabulary (`gpt2`), which splits
    /// text into pre-tokens before merging, so that a text's tokens can be
    /// reproduced from the text alone.
    pub fn is_byte_level(&self) -> bool {
        matches!(self.inner, Inner::Bpe(_))
    }

    /// Beginning-of-sequence token id, if the GGUF names one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// End-of-sequence token id, if the GGUF names one.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// End-of-generation token ids (sorted, deduplicated): EOS, EOT/EOM when the GGUF
    /// names them, and tokens whose text llama.cpp treats as end-of-generation
    /// (`<|im_end|>`, `<|endoftext|>`, `<|eot_id|>`, ...).
    pub fn eog_ids(&self) -> &[u32] {
        &self.eog
    }

    /// Whether `id` ends generation (see [`eog_ids`](Self::eog_ids)).
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }

    /// Whether the GGUF asks for a BOS token in front of every prompt.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// Whether `id` is a control or user-defined token (false for unknown ids).
    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    /// The vocabulary string of `id` (byte-level encoded for normal tokens, e.g. `"Ġthe"`).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// Looks a vocabulary string up (exact match on the stored string).
    pub fn token_id(&self, text: &str) -> Option<u32> {
        match &self.inner {
            Inner::Bpe(t) => t.token_to_id(text),
            Inner::Spm(m) => m.token_id(text),
        }
    }
}

/// Incremental detokenizer for streaming output.
///
/// Push token ids one at a time; each call returns only complete UTF-8 text, holding back
/// the bytes of a character split across tokens until it is complete.  Invalid byte
/// sequences are replaced with U+FFFD exactly as [`GgufTokenizer::decode`] would, so the
/// concatenation of all chunks plus [`finish`](Self::finish) equals `decode` of all ids.
#[derive(Debug, Clone, Default)]
pub struct StreamDecoder {
    pending: Vec<u8>,
}

impl StreamDecoder {
    /// A decoder with nothing pending.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds token `id` and returns the text that became complete (possibly empty).
    /// Ids outside the vocabulary contribute nothing.
    pub fn push(&mut self, tok: &GgufTokenizer, id: u32) -> String {
        if let Some(b) = tok.token_bytes_ref(id) {
            self.pending.extend_from_slice(b);
        }
        let mut out = String::new();
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // The prefix is valid UTF-8 by construction.
                    out.push_str(&String::from_utf8_lossy(
                        &self.pending[start..start + valid],
                    ));
                    match e.error_len() {
                        // Incomplete character at the end: keep it for the next push.
                        None => {
                            start += valid;
                            break;
                        }
                        // Invalid sequence: replace it, as from_utf8_lossy does.
                        Some(len) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            start += valid + len;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
        out
    }

    /// Whether bytes of an incomplete character are being held back.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Flushes any held-back bytes (lossily) and resets the decoder.
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}

/// Reads the test model's GGUF header; panics with a clear message if it is missing.
#[cfg(test)]
pub(crate) fn load_test_content() -> Content {
    let path = inferno_cluster_tests::test_model();
    let mut f = std::fs::File::open(&path).unwrap_or_else(|e| {
        panic!(
            "test model {} not found ({e}); set INFERNO_TEST_MODEL to a SmolLM2 GGUF",
            path.display()
        )
    });
    Content::read(&mut f).unwrap_or_else(|e| panic!("reading GGUF {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::OnceLock;

    fn tok() -> &'static GgufTokenizer {
        static TOK: OnceLock<GgufTokenizer> = OnceLock::new();
        TOK.get_or_init(|| GgufTokenizer::from_gguf(&load_test_content()).unwrap())
    }

    fn round_trip(text: &str) -> Vec<u32> {
        let t = tok();
        let ids = t.encode(text).unwrap();
        assert_eq!(
            t.decode(&ids).unwrap(),
            text,
            "round trip of {text:?} ({ids:?})"
        );
        ids
    }

    const CHAT_PROMPT: &str = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is 2+2? Answer with one number.<|im_end|>\n<|im_start|>assistant\n";

    #[test]
    fn metadata_ids() {
        let t = tok();
        assert_eq!(t.vocab_size(), 49152);
        assert_eq!(t.bos_id(), Some(1));
        assert_eq!(t.eos_id(), Some(2));
        assert!(!t.add_bos());
        // eos plus <|endoftext|> (id 0).
        assert_eq!(t.eog_ids(), &[0, 2]);
        assert!(t.is_eog(2) && t.is_eog(0) && !t.is_eog(1));
        assert!(t.is_special(1) && t.is_special(2) && t.is_special(16));
        assert!(!t.is_special(17) && !t.is_special(1_000_000));
        assert_eq!(t.token_text(1), Some("<|im_start|>"));
        assert_eq!(t.token_text(49152), None);
        assert_eq!(t.token_id("<|im_end|>"), Some(2));
    }

    #[test]
    fn ascii_round_trip_and_no_prefix_space() {
        let ids = round_trip("Hello");
        assert_eq!(ids.len(), 1);
        assert_eq!(tok().token_text(ids[0]), Some("Hello"));
        let ids = round_trip("Hello world, this is a test.");
        assert!(!tok().token_text(ids[0]).unwrap().starts_with('Ġ'));
    }

    #[test]
    fn digits_are_split_individually() {
        let t = tok();
        let ids = round_trip("12345");
        assert_eq!(ids.len(), 5);
        let texts: Vec<&str> = ids.iter().map(|i| t.token_text(*i).unwrap()).collect();
        assert_eq!(texts, ["1", "2", "3", "4", "5"]);
        round_trip("pi is 3.14159 and 2+2=4");
    }

    #[test]
    fn unicode_round_trips() {
        round_trip("I like 🦀 and 👍🏽 and 🇫🇷!");
        round_trip("你好，世界。日本語のテキスト");
        round_trip("Ünïcödé ñ ß — “quotes” …");
    }

    #[test]
    fn whitespace_round_trips() {
        round_trip("a  b   c    d");
        round_trip("tabs\tand\t\tmore\ttabs");
        round_trip("line1\nline2\n\n\nline5\r\n");
        round_trip("   leading and trailing   ");
        round_trip("\n");
        round_trip("");
    }

    #[test]
    fn chat_prompt_special_tokens() {
        let t = tok();
        let ids = round_trip(CHAT_PROMPT);
        assert_eq!(ids[0], 1);
        assert_eq!(ids.iter().filter(|&&i| i == 1).count(), 3);
        assert_eq!(ids.iter().filter(|&&i| i == 2).count(), 2);
        assert_eq!(t.encode("<|im_start|>").unwrap(), [1]);
        assert_eq!(t.encode("<|im_end|>").unwrap(), [2]);
        assert_eq!(t.encode("<|endoftext|>").unwrap(), [0]);
        // Special-looking text that is not a token is tokenized normally.
        let ids = t.encode("<|im_foo|>").unwrap();
        assert!(ids.len() > 1 && ids.iter().all(|i| !t.is_special(*i)));
    }

    #[test]
    fn token_bytes_table() {
        let t = tok();
        let hello = t.encode(" Hello").unwrap();
        assert_eq!(hello.len(), 1);
        assert_eq!(t.token_bytes(hello[0]).unwrap(), b" Hello");
        assert_eq!(t.token_bytes(1).unwrap(), b"<|im_start|>");
        assert_eq!(t.token_bytes(100_000), None);
        assert!(t.decode(&[100_000]).is_err());
    }

    #[test]
    fn stream_decoder_holds_partial_characters() {
        let t = tok();
        let text = "ok 🦀🇫🇷 你好 done";
        let ids = t.encode(text).unwrap();
        // The emoji must be split over several byte-level tokens for the test to mean much.
        let crab = t.encode("🦀").unwrap();
        assert!(crab.len() > 1, "🦀 is a single token: {crab:?}");
        let mut dec = StreamDecoder::new();
        let mut out = String::new();
        for &id in &ids {
            let chunk = dec.push(t, id);
            assert!(
                !chunk.contains('\u{FFFD}'),
                "partial char emitted: {chunk:?}"
            );
            out.push_str(&chunk);
        }
        out.push_str(&dec.finish());
        assert_eq!(out, t.decode(&ids).unwrap());
        assert_eq!(out, text);

        // Only the emoji's tokens: nothing until the last one.
        let mut dec = StreamDecoder::new();
        let chunks: Vec<String> = crab.iter().map(|&id| dec.push(t, id)).collect();
        assert!(chunks[..chunks.len() - 1].iter().all(String::is_empty));
        assert_eq!(chunks.last().unwrap(), "🦀");
        assert!(!dec.has_pending());
    }

    #[test]
    fn stream_decoder_lossy_matches_decode() {
        let t = tok();
        let crab = t.encode("🦀").unwrap();
        // A truncated character followed by ASCII, then a dangling start byte at the end.
        let mut ids = crab[..crab.len() - 1].to_vec();
        ids.extend(t.encode("abc").unwrap());
        ids.extend_from_slice(&crab[..1]);
        let mut dec = StreamDecoder::new();
        let mut out: String = ids.iter().map(|&id| dec.push(t, id)).collect();
        out.push_str(&dec.finish());
        assert_eq!(out, t.decode(&ids).unwrap());
        assert!(out.contains("abc") && out.contains('\u{FFFD}'));
        assert!(!dec.has_pending());
    }

    #[test]
    fn missing_and_bad_metadata_are_errors() {
        let mut content = load_test_content();
        let tokens = content.metadata.remove(KEY_TOKENS).unwrap();
        let err = GgufTokenizer::from_gguf(&content).unwrap_err();
        assert!(
            matches!(&err, TokenizerError::MissingKey(k) if k == KEY_TOKENS),
            "{err}"
        );

        content
            .metadata
            .insert(KEY_TOKENS.into(), Value::String("nope".into()));
        let err = GgufTokenizer::from_gguf(&content).unwrap_err();
        assert!(matches!(err, TokenizerError::WrongType { .. }), "{err}");
        content.metadata.insert(KEY_TOKENS.into(), tokens);

        content
            .metadata
            .insert(KEY_EOS.into(), Value::String("2".into()));
        let err = GgufTokenizer::from_gguf(&content).unwrap_err();
        assert!(matches!(err, TokenizerError::WrongType { .. }), "{err}");
        content.metadata.insert(KEY_EOS.into(), Value::U32(1 << 30));
        let err = GgufTokenizer::from_gguf(&content).unwrap_err();
        assert!(matches!(err, TokenizerError::InvalidMetadata(_)), "{err}");
        content.metadata.insert(KEY_EOS.into(), Value::U32(2));

        content
            .metadata
            .insert(KEY_MODEL.into(), Value::String("bert".into()));
        let err = GgufTokenizer::from_gguf(&content).unwrap_err();
        assert!(matches!(err, TokenizerError::UnsupportedModel(_)), "{err}");
        assert!(err.to_string().contains("SentencePiece"));
        // SentencePiece needs the scores.
        content
            .metadata
            .insert(KEY_MODEL.into(), Value::String("llama".into()));
        let err = GgufTokenizer::from_gguf(&content).unwrap_err();
        assert!(
            matches!(err, TokenizerError::MissingKey(ref k) if k == KEY_SCORES),
            "{err}"
        );
        content
            .metadata
            .insert(KEY_MODEL.into(), Value::String("gpt2".into()));

        content
            .metadata
            .insert(KEY_PRE.into(), Value::String("tekken".into()));
        let err = GgufTokenizer::from_gguf(&content).unwrap_err();
        assert!(
            matches!(err, TokenizerError::UnsupportedPreTokenizer(_)),
            "{err}"
        );

        content.metadata.remove(KEY_MERGES);
        let err = GgufTokenizer::from_gguf(&content).unwrap_err();
        assert!(
            matches!(err, TokenizerError::UnsupportedPreTokenizer(_)),
            "{err}"
        );
        content
            .metadata
            .insert(KEY_PRE.into(), Value::String("smollm".into()));
        let err = GgufTokenizer::from_gguf(&content).unwrap_err();
        assert!(
            matches!(&err, TokenizerError::MissingKey(k) if k == KEY_MERGES),
            "{err}"
        );
    }

    #[test]
    fn hand_built_content() {
        use candle_core::quantized::gguf_file::VersionedMagic;
        let strs =
            |v: &[&str]| Value::Array(v.iter().map(|s| Value::String(s.to_string())).collect());
        let mut metadata = HashMap::new();
        metadata.insert(KEY_MODEL.to_string(), Value::String("gpt2".into()));
        metadata.insert(KEY_PRE.to_string(), Value::String("gpt2".into()));
        metadata.insert(
            KEY_TOKENS.to_string(),
            strs(&["<eos>", "a", "b", "ab", "Ġ", "Ġab"]),
        );
        metadata.insert(
            KEY_TOKEN_TYPE.to_string(),
            Value::Array([3, 1, 1, 1, 1, 1].map(Value::I32).to_vec()),
        );
        metadata.insert(KEY_MERGES.to_string(), strs(&["a b", "Ġ ab"]));
        metadata.insert(KEY_EOS.to_string(), Value::U32(0));
        let mut content = Content {
            magic: VersionedMagic::GgufV3,
            metadata,
            tensor_infos: HashMap::new(),
            tensor_data_offset: 0,
        };
        let t = GgufTokenizer::from_gguf(&content).unwrap();
        assert_eq!(t.encode("ab ab<eos>").unwrap(), [3, 5, 0]);
        assert_eq!(t.decode(&[3, 5, 0]).unwrap(), "ab ab<eos>");
        assert_eq!(t.eog_ids(), &[0]);

        content.metadata.insert(KEY_MERGES.into(), strs(&["ab"]));
        let err = GgufTokenizer::from_gguf(&content).unwrap_err();
        assert!(matches!(err, TokenizerError::InvalidMetadata(_)), "{err}");
        content.metadata.insert(KEY_MERGES.into(), strs(&["a c"]));
        let err = GgufTokenizer::from_gguf(&content).unwrap_err();
        assert!(matches!(err, TokenizerError::Tokenizers(_)), "{err}");
        content.metadata.insert(KEY_MERGES.into(), strs(&["a b"]));
        content
            .metadata
            .insert(KEY_TOKEN_TYPE.into(), Value::Array(vec![Value::I32(1)]));
        let err = GgufTokenizer::from_gguf(&content).unwrap_err();
        assert!(matches!(err, TokenizerError::InvalidMetadata(_)), "{err}");
    }

    #[test]
    fn other_pre_tokenizers_build() {
        let mut content = load_test_content();
        for pre in ["gpt2", "default", "llama-bpe"] {
            content
                .metadata
                .insert(KEY_PRE.into(), Value::String(pre.into()));
            let t = GgufTokenizer::from_gguf(&content).unwrap();
            let text = "Hello world 12345 <|im_start|>x";
            let ids = t.encode(text).unwrap();
            assert_eq!(t.decode(&ids).unwrap(), text, "{pre}");
        }
        // llama-bpe defaults to add_bos when the key is absent.
        content.metadata.remove(KEY_ADD_BOS);
        let t = GgufTokenizer::from_gguf(&content).unwrap();
        assert_eq!(t.encode("hi").unwrap()[0], 1);
    }

    #[test]
    fn tokenizer_is_send_sync_clone() {
        fn check<T: Send + Sync + Clone>() {}
        check::<GgufTokenizer>();
        check::<StreamDecoder>();
    }
}
