//! Builds the response bodies and stream chunks of one request.

use protocol::{FinishReason, TokenLogprob, ToolFormat};
use serde_json::Value;

use super::response::{
    ChatChoiceOut, ChatCompletionOut, DeltaOut, FunctionCallOut, FunctionDeltaOut, MessageOut,
    TextChoiceOut, TextCompletionOut, ToolCallDeltaOut, ToolCallOut, UsageOut,
};
use super::tools::{self, ToolEvent};

/// Which endpoint a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Text,
}

/// The fixed parts of every body and chunk of one response.
#[derive(Debug, Clone)]
pub(crate) struct Shape {
    endpoint: Endpoint,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    tool_format: Option<ToolFormat>,
    logprobs: bool,
}

/// One finished choice of a non-streaming answer.
#[derive(Debug, Clone)]
pub(crate) struct Choice {
    /// All of its text.
    pub text: String,
    /// Why it ended.
    pub reason: FinishReason,
    /// Its tokens' log-probabilities (empty unless asked for).
    pub logprobs: Vec<TokenLogprob>,
}

/// A JSON-serializable body or chunk.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(untagged)]
pub(crate) enum Body {
    /// Chat completion or chunk.
    Chat(ChatCompletionOut),
    /// Text completion or chunk.
    Text(TextCompletionOut),
}

impl Shape {
    /// The shape of a response to `model` at `endpoint`.
    pub(crate) fn new(endpoint: Endpoint, model: String, include_usage: bool) -> Self {
        let prefix = match endpoint {
            Endpoint::Chat => "chatcmpl-",
            Endpoint::Text => "cmpl-",
        };
        Self {
            endpoint,
            id: super::dispatch::response_id(prefix),
            created: super::dispatch::unix_now(),
            model,
            include_usage,
            tool_format: None,
            logprobs: false,
        }
    }

    /// The same shape for an answer that reports log-probabilities.
    pub(crate) fn with_logprobs(mut self, on: bool) -> Self {
        self.logprobs = on;
        self
    }

    /// The `logprobs` value of a choice or chunk holding `tokens`, whose
    /// text starts `offset` characters into its choice's text: `None`
    /// unless the request asked for log-probabilities.
    pub(crate) fn logprobs(&self, tokens: &[TokenLogprob], offset: usize) -> Option<Value> {
        if !self.logprobs {
            return None;
        }
        Some(match self.endpoint {
            Endpoint::Chat => super::logprobs::chat(tokens),
            Endpoint::Text => super::logprobs::completion(tokens, offset),
        })
    }

    /// The same shape for an answer that may hold tool calls in `format`.
    pub(crate) fn with_tools(mut self, format: Option<ToolFormat>) -> Self {
        self.tool_format = format;
        self
    }

    /// The tool call format the answer's text is parsed in, if any.
    pub(crate) fn tool_format(&self) -> Option<ToolFormat> {
        self.tool_format
    }

    /// The whole non-streaming response, its choices in order.
    pub(crate) fn complete(&self, choices: Vec<Choice>, usage: UsageOut) -> Body {
        match self.endpoint {
            Endpoint::Chat => {
                let choices = choices
                    .into_iter()
                    .zip(0u32..)
                    .map(|(c, index)| self.chat_choice(index, c))
                    .collect();
                Body::Chat(self.chat("chat.completion", choices, Some(Some(usage))))
            }
            Endpoint::Text => {
                let choices = choices
                    .into_iter()
                    .zip(0u32..)
                    .map(|(c, index)| {
                        let logprobs = self.logprobs(&c.logprobs, 0);
                        text_choice(index, c.text, logprobs, Some(c.reason))
                    })
                    .collect();
                Body::Text(self.text(choices, Some(Some(usage))))
            }
        }
    }

    /// One whole chat choice: its text parsed for tool calls when tools
    /// were offered.
    fn chat_choice(&self, index: u32, choice: Choice) -> ChatChoiceOut {
        let logprobs = self.logprobs(&choice.logprobs, 0);
        let (content, calls) = match self.tool_format {
            None => (Some(choice.text), Vec::new()),
            Some(ToolFormat::Hermes) => tools::parse::collect(&choice.text),
        };
        let reason = calls_finish(choice.reason, !calls.is_empty());
        let tool_calls = calls
            .into_iter()
            .map(|c| ToolCallOut {
                id: c.id,
                kind: "function",
                function: FunctionCallOut {
                    name: c.name,
                    arguments: c.arguments,
                },
            })
            .collect();
        ChatChoiceOut {
            index,
            message: Some(MessageOut {
                role: "assistant",
                content,
                tool_calls,
            }),
            delta: None,
            logprobs,
            finish_reason: Some(reason.as_str()),
        }
    }

    /// The first chat chunk of choice `index`, announcing the assistant
    /// role; `None` for text completions.
    pub(crate) fn role_chunk(&self, index: u32) -> Option<Body> {
        match self.endpoint {
            Endpoint::Chat => Some(self.chat_chunk(
                index,
                DeltaOut {
                    role: Some("assistant"),
                    content: Some(String::new()),
                    tool_calls: None,
                },
                None,
                None,
            )),
            Endpoint::Text => None,
        }
    }

    /// A chunk of new text of choice `index`, with its tokens'
    /// `logprobs` value (from [`Shape::logprobs`]).
    pub(crate) fn content_chunk(&self, index: u32, text: String, logprobs: Option<Value>) -> Body {
        match self.endpoint {
            Endpoint::Chat => self.chat_chunk(
                index,
                DeltaOut {
                    role: None,
                    content: Some(text),
                    tool_calls: None,
                },
                logprobs,
                None,
            ),
            Endpoint::Text => Body::Text(self.text(
                vec![text_choice(index, text, logprobs, None)],
                self.usage_slot(),
            )),
        }
    }

    /// The chunk of one parsed piece of choice `index` of a chat answer
    /// that may hold tool calls.
    pub(crate) fn tool_event_chunk(&self, index: u32, event: ToolEvent) -> Body {
        let call = match event {
            ToolEvent::Content(text) => return self.content_chunk(index, text, None),
            ToolEvent::CallStart {
                index: call,
                id,
                name,
            } => ToolCallDeltaOut {
                index: call,
                id: Some(id),
                kind: Some("function"),
                function: FunctionDeltaOut {
                    name: Some(name),
                    arguments: String::new(),
                },
            },
            ToolEvent::CallArgs { index: call, delta } => ToolCallDeltaOut {
                index: call,
                id: None,
                kind: None,
                function: FunctionDeltaOut {
                    name: None,
                    arguments: delta,
                },
            },
        };
        self.chat_chunk(
            index,
            DeltaOut {
                tool_calls: Some(vec![call]),
                ..DeltaOut::default()
            },
            None,
            None,
        )
    }

    /// The chunk that carries choice `index`'s finish reason; `called`
    /// when the answer made tool calls.
    pub(crate) fn finish_chunk(&self, index: u32, reason: FinishReason, called: bool) -> Body {
        match self.endpoint {
            Endpoint::Chat => self.chat_chunk(
                index,
                DeltaOut::default(),
                None,
                Some(calls_finish(reason, called)),
            ),
            Endpoint::Text => Body::Text(self.text(
                vec![text_choice(index, String::new(), None, Some(reason))],
                self.usage_slot(),
            )),
        }
    }

    /// The final usage chunk (empty `choices`), if the client asked for it.
    pub(crate) fn usage_chunk(&self, usage: UsageOut) -> Option<Body> {
        if !self.include_usage {
            return None;
        }
        Some(match self.endpoint {
            Endpoint::Chat => {
                Body::Chat(self.chat("chat.completion.chunk", Vec::new(), Some(Some(usage))))
            }
            Endpoint::Text => Body::Text(self.text(Vec::new(), Some(Some(usage)))),
        })
    }

    /// `"usage": null` on ordinary chunks when the client asked for usage, absent otherwise.
    fn usage_slot(&self) -> Option<Option<UsageOut>> {
        self.include_usage.then_some(None)
    }

    fn chat_chunk(
        &self,
        index: u32,
        delta: DeltaOut,
        logprobs: Option<Value>,
        reason: Option<FinishReason>,
    ) -> Body {
        Body::Chat(self.chat(
            "chat.completion.chunk",
            vec![ChatChoiceOut {
                index,
                message: None,
                delta: Some(delta),
                logprobs,
                finish_reason: reason.map(FinishReason::as_str),
            }],
            self.usage_slot(),
        ))
    }

    fn chat(
        &self,
        object: &'static str,
        choices: Vec<ChatChoiceOut>,
        usage: Option<Option<UsageOut>>,
    ) -> ChatCompletionOut {
        ChatCompletionOut {
            id: self.id.clone(),
            object,
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
        }
    }

    fn text(
        &self,
        choices: Vec<TextChoiceOut>,
        usage: Option<Option<UsageOut>>,
    ) -> TextCompletionOut {
        TextCompletionOut {
            id: self.id.clone(),
            object: "text_completion",
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
        }
    }
}

/// An answer that made calls and stopped on its own finished to call them.
pub(crate) fn calls_finish(reason: FinishReason, called: bool) -> FinishReason {
    if called && reason == FinishReason::Stop {
        FinishReason::ToolCalls
    } else {
        reason
    }
}

fn text_choice(
    index: u32,
    text: String,
    logprobs: Option<Value>,
    reason: Option<FinishReason>,
) -> TextChoiceOut {
    TextChoiceOut {
        index,
        text,
        logprobs,
        finish_reason: reason.map(FinishReason::as_str),
    }
}
