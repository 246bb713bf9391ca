//! What a caller needs to turn user input into prompt tokens for one model:
//! its tokenizer, its chat template and its limits.

use std::sync::OnceLock;

use protocol::{ChatMessage, OutputConstraint};

use crate::chat::ChatTemplate;
use crate::gguf::GgufFile;
use crate::grammar::{GrammarCompiler, GrammarError, TokenConstraint};
use crate::model::ModelConfig;
use crate::tokenizer::GgufTokenizer;

/// Why a prompt could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    /// The tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),
    /// The chat template failed to render or compile.
    #[error("chat template: {0}")]
    Template(#[from] crate::chat::ChatTemplateError),
    /// The model has no chat template, so chat requests cannot be served.
    #[error("this model has no chat template")]
    NoChatTemplate,
    /// Tools were offered to a model whose chat template has no tool support.
    #[error("this model does not support tools: its chat template has no tool support")]
    NoToolSupport,
    /// The tool definitions or a tool call are not acceptable.
    #[error("{0}")]
    BadTools(String),
    /// The prompt's text is so long that it cannot fit the context
    /// whatever it tokenizes to: refused before tokenizing it.
    #[error(
        "the prompt ({bytes} bytes) cannot fit the context of {context} tokens \
         (at most {limit} bytes of text)"
    )]
    PromptTooLong {
        /// Bytes of prompt text.
        bytes: usize,
        /// The model's context length, in tokens.
        context: usize,
        /// The most bytes `context` tokens can hold.
        limit: usize,
    },
}

/// Tokenizer, chat template and configuration of a loaded model.
pub struct ModelFrontend {
    /// The tokenizer built from the file's metadata.
    pub tokenizer: GgufTokenizer,
    /// The file's own chat template, if it has one.
    pub chat: Option<ChatTemplate>,
    /// The model's hyper-parameters.
    pub config: ModelConfig,
    /// Bytes of the longest token: a text of `n` bytes has at least
    /// `n / max_token_bytes` tokens.
    max_token_bytes: usize,
    /// The grammar compiler, built on the first constrained request.
    grammar: OnceLock<Result<GrammarCompiler, GrammarError>>,
}

impl ModelFrontend {
    /// Builds the tokenizer and chat template from an opened GGUF file.
    pub fn from_gguf(file: &GgufFile, config: ModelConfig) -> Result<Self, FrontendError> {
        let tokenizer = GgufTokenizer::from_gguf(&file.content)?;
        let chat = ChatTemplate::from_gguf(&file.content, &tokenizer)?;
        let max_token_bytes = (0..tokenizer.vocab_size())
            .filter_map(|id| u32::try_from(id).ok())
            .filter_map(|id| tokenizer.token_bytes_ref(id).map(<[u8]>::len))
            .max()
            .unwrap_or(1)
            .max(1);
        Ok(Self {
            tokenizer,
            chat,
            config,
            max_token_bytes,
            grammar: OnceLock::new(),
        })
    }

    /// A fresh grammar state for `constraint` (compiled once per distinct
    /// constraint, then cloned from a cache).
    pub fn constraint(
        &self,
        constraint: &OutputConstraint,
    ) -> Result<TokenConstraint, GrammarError> {
        self.grammar
            .get_or_init(|| GrammarCompiler::new(&self.tokenizer, self.config.vocab_size))
            .as_ref()
            .map_err(Clone::clone)?
            .compile(constraint)
    }

    /// Refuses a prompt of `bytes` bytes of text that cannot fit the
    /// model's context whatever its tokens: tokenizing megabytes only to
    /// refuse them costs memory and CPU a client should not be able to
    /// make a node spend.
    fn refuse_surely_too_long(&self, bytes: usize) -> Result<(), FrontendError> {
        let context = self.config.context_length;
        let limit = context.saturating_mul(self.max_token_bytes);
        if bytes > limit {
            return Err(FrontendError::PromptTooLong {
                bytes,
                context,
                limit,
            });
        }
        Ok(())
    }

    /// Tokens of a raw text prompt; special-token text in it (e.g.
    /// `<|im_end|>`) becomes special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, FrontendError> {
        self.refuse_surely_too_long(text.len())?;
        Ok(self.tokenizer.encode(text)?)
    }

    /// Tokens of a raw text prompt in which special-token text is ordinary
    /// text (what an API client sends, unless allowed otherwise).
    pub fn encode_as_text(&self, text: &str) -> Result<Vec<u32>, FrontendError> {
        self.refuse_surely_too_long(text.len())?;
        let whole = 0..text.len();
        Ok(self
            .tokenizer
            .encode_with_literals(text, std::slice::from_ref(&whole))?)
    }

    /// Renders a conversation through the chat template (with the assistant
    /// turn opened) and tokenizes it. Special-token text inside message
    /// contents stays text: only the template's own markup becomes special
    /// tokens, so a message cannot end its turn or open another role's.
    ///
    /// `tools` (a JSON array of OpenAI tool definitions) is offered to the
    /// template. Tool definitions and the calls in earlier assistant turns
    /// are rendered as the template chooses, not as literal text, so they
    /// must not hold special-token text at all.
    pub fn chat_prompt(
        &self,
        messages: &[ChatMessage],
        tools: Option<&str>,
    ) -> Result<Vec<u32>, FrontendError> {
        let chat = self.chat.as_ref().ok_or(FrontendError::NoChatTemplate)?;
        let calls = || messages.iter().flat_map(|m| &m.tool_calls);
        let bytes = messages.iter().map(|m| m.content.len()).sum::<usize>()
            + tools.map_or(0, str::len)
            + calls()
                .map(|c| c.name.len() + c.arguments.len())
                .sum::<usize>();
        self.refuse_surely_too_long(bytes)?;
        let tools = match tools {
            None => None,
            Some(_) if chat.tool_format().is_none() => return Err(FrontendError::NoToolSupport),
            Some(json) => {
                self.refuse_special_text("the tool definitions", json)?;
                Some(
                    serde_json::from_str::<serde_json::Value>(json).map_err(|e| {
                        FrontendError::BadTools(format!("the tool definitions are not JSON: {e}"))
                    })?,
                )
            }
        };
        for call in calls() {
            self.refuse_special_text("a tool call", &call.name)?;
            self.refuse_special_text("a tool call", &call.arguments)?;
        }
        let (text, literals) = chat.render_with_literals(messages, tools.as_ref(), true)?;
        Ok(self.tokenizer.encode_with_literals(&text, &literals)?)
    }

    /// Refuses `text` if any of it would tokenize as a special token.
    fn refuse_special_text(&self, what: &str, text: &str) -> Result<(), FrontendError> {
        let ids = self.tokenizer.encode(text)?;
        match ids.iter().find(|id| self.tokenizer.is_special(**id)) {
            Some(id) => Err(FrontendError::BadTools(format!(
                "{what} may not contain special-token text ({:?})",
                self.tokenizer.decode(&[*id]).unwrap_or_default()
            ))),
            None => Ok(()),
        }
    }

    /// How this model calls tools; `None` if its template has no tool support.
    pub fn tool_format(&self) -> Option<protocol::ToolFormat> {
        self.chat.as_ref().and_then(ChatTemplate::tool_format)
    }
}
