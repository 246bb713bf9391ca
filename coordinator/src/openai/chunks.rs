//! Builds the response bodies and stream chunks of one request.

use protocol::{FinishReason, ToolFormat};

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
        }
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

    /// The whole non-streaming response.
    pub(crate) fn complete(&self, text: String, reason: FinishReason, usage: UsageOut) -> Body {
        match self.endpoint {
            Endpoint::Chat => {
                let (content, calls) = match self.tool_format {
                    None => (Some(text), Vec::new()),
                    Some(ToolFormat::Hermes) => tools::parse::collect(&text),
                };
                let reason = calls_finish(reason, !calls.is_empty());
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
                Body::Chat(self.chat(
                    "chat.completion",
                    vec![ChatChoiceOut {
                        index: 0,
                        message: Some(MessageOut {
                            role: "assistant",
                            content,
                            tool_calls,
                        }),
                        delta: None,
                        logprobs: None,
                        finish_reason: Some(reason.as_str()),
                    }],
                    Some(Some(usage)),
                ))
            }
            Endpoint::Text => {
                Body::Text(self.text(vec![text_choice(text, Some(reason))], Some(Some(usage))))
            }
        }
    }

    /// The first chat chunk, announcing the assistant role; `None` for text completions.
    pub(crate) fn role_chunk(&self) -> Option<Body> {
        match self.endpoint {
            Endpoint::Chat => Some(self.chat_chunk(
                DeltaOut {
                    role: Some("assistant"),
                    content: Some(String::new()),
                    tool_calls: None,
                },
                None,
            )),
            Endpoint::Text => None,
        }
    }

    /// A chunk of new text.
    pub(crate) fn content_chunk(&self, text: String) -> Body {
        match self.endpoint {
            Endpoint::Chat => self.chat_chunk(
                DeltaOut {
                    role: None,
                    content: Some(text),
                    tool_calls: None,
                },
                None,
            ),
            Endpoint::Text => {
                Body::Text(self.text(vec![text_choice(text, None)], self.usage_slot()))
            }
        }
    }

    /// The chunk of one parsed piece of a chat answer that may hold tool
    /// calls.
    pub(crate) fn tool_event_chunk(&self, event: ToolEvent) -> Body {
        let call = match event {
            ToolEvent::Content(text) => return self.content_chunk(text),
            ToolEvent::CallStart { index, id, name } => ToolCallDeltaOut {
                index,
                id: Some(id),
                kind: Some("function"),
                function: FunctionDeltaOut {
                    name: Some(name),
                    arguments: String::new(),
                },
            },
            ToolEvent::CallArgs { index, delta } => ToolCallDeltaOut {
                index,
                id: None,
                kind: None,
                function: FunctionDeltaOut {
                    name: None,
                    arguments: delta,
                },
            },
        };
        self.chat_chunk(
            DeltaOut {
                tool_calls: Some(vec![call]),
                ..DeltaOut::default()
            },
            None,
        )
    }

    /// The chunk that carries the finish reason; `called` when the answer
    /// made tool calls.
    pub(crate) fn finish_chunk(&self, reason: FinishReason, called: bool) -> Body {
        match self.endpoint {
            Endpoint::Chat => {
                self.chat_chunk(DeltaOut::default(), Some(calls_finish(reason, called)))
            }
            Endpoint::Text => Body::Text(self.text(
                vec![text_choice(String::new(), Some(reason))],
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

    fn chat_chunk(&self, delta: DeltaOut, reason: Option<FinishReason>) -> Body {
        Body::Chat(self.chat(
            "chat.completion.chunk",
            vec![ChatChoiceOut {
                index: 0,
                message: None,
                delta: Some(delta),
                logprobs: None,
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
fn calls_finish(reason: FinishReason, called: bool) -> FinishReason {
    if called && reason == FinishReason::Stop {
        FinishReason::ToolCalls
    } else {
        reason
    }
}

fn text_choice(text: String, reason: Option<FinishReason>) -> TextChoiceOut {
    TextChoiceOut {
        index: 0,
        text,
        logprobs: None,
        finish_reason: reason.map(FinishReason::as_str),
    }
}
