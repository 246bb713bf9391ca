//! What a caller needs to turn user input into prompt tokens for one model:
//! its tokenizer, its chat template and its limits.

use protocol::ChatMessage;

use crate::chat::ChatTemplate;
use crate::gguf::GgufFile;
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
}

/// Tokenizer, chat template and configuration of a loaded model.
pub struct ModelFrontend {
    /// The tokenizer built from the file's metadata.
    pub tokenizer: GgufTokenizer,
    /// The file's own chat template, if it has one.
    pub chat: Option<ChatTemplate>,
    /// The model's hyper-parameters.
    pub config: ModelConfig,
}

impl ModelFrontend {
    /// Builds the tokenizer and chat template from an opened GGUF file.
    pub fn from_gguf(file: &GgufFile, config: ModelConfig) -> Result<Self, FrontendError> {
        let tokenizer = GgufTokenizer::from_gguf(&file.content)?;
        let chat = ChatTemplate::from_gguf(&file.content, &tokenizer)?;
        Ok(Self {
            tokenizer,
            chat,
            config,
        })
    }

    /// Tokens of a raw text prompt.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, FrontendError> {
        Ok(self.tokenizer.encode(text)?)
    }

    /// Renders a conversation through the chat template (with the assistant
    /// turn opened) and tokenizes it. Special-token text inside message
    /// contents stays text: only the template's own markup becomes special
    /// tokens, so a message cannot end its turn or open another role's.
    pub fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, FrontendError> {
        let chat = self.chat.as_ref().ok_or(FrontendError::NoChatTemplate)?;
        let (text, literals) = chat.render_with_literals(messages, true)?;
        Ok(self.tokenizer.encode_with_literals(&text, &literals)?)
    }
}
