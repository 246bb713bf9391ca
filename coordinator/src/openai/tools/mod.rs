//! Function tools: the `tools`, `tool_choice` and `parallel_tool_calls`
//! fields checked ([`spec`]), the grammar that keeps calls well-formed
//! ([`grammar`]), and the calls parsed back out of the model's text, whole
//! or as it streams ([`parse`]).
//!
//! Which format a model calls tools in comes from its chat template, as the
//! node that has its file reports it ([`protocol::ToolFormat`]).

pub(crate) mod grammar;
pub(crate) mod parse;
pub(crate) mod spec;

pub(crate) use parse::{ToolCallParser, ToolEvent};
pub(crate) use spec::ToolPlan;

use protocol::{ModelCard, ToolFormat};

use super::errors::ApiError;
use super::validate::Validated;

/// Gives a request its tools for `model` (as its card describes it): the
/// definitions for the chat template and the grammar of the calls. `None`
/// when the request offers no tools; 400 when the model cannot call them.
pub(crate) fn apply(
    v: &mut Validated,
    card: Option<&ModelCard>,
) -> Result<Option<ToolFormat>, ApiError> {
    let Some(plan) = &v.tools else {
        return Ok(None);
    };
    let Some(format) = card.and_then(|c| c.tool_format) else {
        return Err(ApiError::invalid(
            format!(
                "The model `{}` does not support tools: its chat template has no tool \
                 call format.",
                v.request.model
            ),
            Some("tools"),
        ));
    };
    v.request.tools = Some(plan.definitions.clone());
    v.request.constraint = Some(grammar::constraint(plan, format));
    Ok(Some(format))
}

#[cfg(test)]
mod tests {
    use protocol::{ChatMessage, Prompt};
    use serde_json::json;

    use super::*;
    use crate::openai::request::ChatCompletionRequest;
    use crate::openai::validate;

    fn with_tools() -> Validated {
        let req: ChatCompletionRequest = serde_json::from_value(json!({
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": "f"}}],
        }))
        .unwrap();
        validate::chat(req).unwrap()
    }

    fn card(tool_format: Option<ToolFormat>) -> ModelCard {
        ModelCard {
            architecture: "llama".into(),
            context_length: 8192,
            quantization: "Q4_1".into(),
            parameters: 1,
            size_bytes: 1,
            chat_template: true,
            tool_format,
        }
    }

    #[test]
    fn a_model_without_a_tool_format_refuses_tools() {
        for c in [None, Some(card(None))] {
            let mut v = with_tools();
            let e = apply(&mut v, c.as_ref()).unwrap_err();
            assert_eq!(e.param(), Some("tools"));
            assert!(
                e.message().contains("does not support tools"),
                "{}",
                e.message()
            );
        }
    }

    #[test]
    fn a_hermes_model_gets_the_definitions_and_the_grammar() {
        let mut v = with_tools();
        let format = apply(&mut v, Some(&card(Some(ToolFormat::Hermes)))).unwrap();
        assert_eq!(format, Some(ToolFormat::Hermes));
        assert!(v
            .request
            .tools
            .as_deref()
            .unwrap()
            .contains("\"name\":\"f\""));
        assert!(v.request.constraint.is_some());
        assert_eq!(
            v.request.prompt,
            Prompt::Chat(vec![ChatMessage::new("user", "hi")])
        );
        let mut plain = v.clone();
        plain.tools = None;
        plain.request.tools = None;
        assert_eq!(apply(&mut plain, None).unwrap(), None);
    }
}
