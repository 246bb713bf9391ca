//! The tool fields of a chat request, checked: each tool a function with a
//! valid name and a JSON-object schema, names unique, `tool_choice` one of
//! OpenAI's forms naming a defined function.

use serde_json::{json, Value};

use crate::openai::errors::ApiError;

/// Most tools one request may offer.
pub(crate) const MAX_TOOLS: usize = 128;

/// Longest function name (OpenAI's limit).
const MAX_NAME_BYTES: usize = 64;

/// One function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Function {
    /// Its name: 1 to 64 of `a-z A-Z 0-9 _ -`.
    pub name: String,
    /// The JSON Schema of its arguments (an object schema).
    pub parameters: Value,
}

/// `tool_choice`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Choice {
    /// The model decides whether to call (the default with tools).
    Auto,
    /// The model must call at least one tool.
    Required,
    /// The model must call this function.
    Named(String),
}

/// The tools a request offers and how the model may use them.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ToolPlan {
    /// The functions, in the request's order.
    pub functions: Vec<Function>,
    /// How the model may call them.
    pub choice: Choice,
    /// Whether several calls may come in one answer.
    pub parallel: bool,
    /// The definitions as the chat template receives them (JSON array of
    /// `{"type":"function","function":{...}}`).
    pub definitions: String,
}

fn invalid(message: String, param: &str) -> ApiError {
    ApiError::invalid(message, Some(param))
}

/// Checks the tool fields; `None` when no tools are offered or
/// `tool_choice` is `"none"` (the tools are then not shown to the model).
pub(crate) fn parse(
    tools: Option<Vec<Value>>,
    tool_choice: Option<Value>,
    parallel: Option<bool>,
) -> Result<Option<ToolPlan>, ApiError> {
    let tools = tools.unwrap_or_default();
    if tools.len() > MAX_TOOLS {
        return Err(invalid(
            format!(
                "'tools' may hold at most {MAX_TOOLS} tools, got {}.",
                tools.len()
            ),
            "tools",
        ));
    }
    let mut functions: Vec<Function> = Vec::with_capacity(tools.len());
    let mut definitions = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        let (function, definition) = function(i, tool)?;
        if functions.iter().any(|f| f.name == function.name) {
            return Err(invalid(
                format!(
                    "Two tools are named '{}'; names must be unique.",
                    function.name
                ),
                &format!("tools[{i}].function.name"),
            ));
        }
        functions.push(function);
        definitions.push(definition);
    }
    let choice = match tool_choice {
        None | Some(Value::Null) => (!functions.is_empty()).then_some(Choice::Auto),
        Some(Value::String(s)) => match s.as_str() {
            "none" => None,
            "auto" => Some(Choice::Auto),
            "required" => Some(Choice::Required),
            other => {
                return Err(invalid(
                    format!(
                        "Invalid 'tool_choice' '{other}': expected 'none', 'auto', \
                         'required' or {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}."
                    ),
                    "tool_choice",
                ))
            }
        },
        Some(v) => {
            let name = v
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .filter(|_| v.get("type").and_then(Value::as_str) == Some("function"));
            match name {
                Some(n) => Some(Choice::Named(n.to_string())),
                None => {
                    return Err(invalid(
                        "Invalid 'tool_choice': an object must be \
                         {\"type\": \"function\", \"function\": {\"name\": ...}}."
                            .into(),
                        "tool_choice",
                    ))
                }
            }
        }
    };
    let Some(choice) = choice else {
        return Ok(None);
    };
    if functions.is_empty() {
        return Err(invalid(
            "'tool_choice' is set but 'tools' offers no function.".into(),
            "tool_choice",
        ));
    }
    if let Choice::Named(n) = &choice {
        if !functions.iter().any(|f| &f.name == n) {
            return Err(invalid(
                format!("'tool_choice' names the function '{n}', which 'tools' does not define."),
                "tool_choice",
            ));
        }
    }
    let definitions = serde_json::to_string(&definitions)
        .map_err(|e| invalid(format!("'tools' could not be encoded: {e}"), "tools"))?;
    Ok(Some(ToolPlan {
        functions,
        choice,
        parallel: parallel.unwrap_or(true),
        definitions,
    }))
}

/// One checked tool and its definition as the template receives it.
fn function(i: usize, tool: &Value) -> Result<(Function, Value), ApiError> {
    let param = format!("tools[{i}]");
    if tool.get("type").and_then(Value::as_str) != Some("function") {
        return Err(invalid(
            format!("{param}: only tools of type 'function' are supported."),
            &format!("{param}.type"),
        ));
    }
    let Some(f) = tool.get("function").and_then(Value::as_object) else {
        return Err(invalid(
            format!("{param}: missing the 'function' object."),
            &format!("{param}.function"),
        ));
    };
    let name = f.get("name").and_then(Value::as_str).unwrap_or_default();
    let name_ok = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !name_ok {
        return Err(invalid(
            format!(
                "{param}.function.name must be 1 to {MAX_NAME_BYTES} letters, digits, \
                 underscores or dashes, got {name:?}."
            ),
            &format!("{param}.function.name"),
        ));
    }
    let parameters = match f.get("parameters") {
        None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
        Some(p @ Value::Object(_)) => p.clone(),
        Some(_) => {
            return Err(invalid(
                format!("{param}.function.parameters must be a JSON Schema object."),
                &format!("{param}.function.parameters"),
            ))
        }
    };
    // The fields in the order OpenAI documents them (and templates were
    // trained on): name, description, parameters.
    let mut definition = serde_json::Map::new();
    definition.insert("name".into(), name.into());
    if let Some(d) = f.get("description").and_then(Value::as_str) {
        definition.insert("description".into(), d.into());
    }
    definition.insert("parameters".into(), parameters.clone());
    Ok((
        Function {
            name: name.to_string(),
            parameters,
        },
        json!({ "type": "function", "function": definition }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weather() -> Value {
        json!({"type": "function", "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"]}
        }})
    }

    #[test]
    fn tools_default_to_auto_and_none_offers_nothing() {
        let plan = parse(Some(vec![weather()]), None, None).unwrap().unwrap();
        assert_eq!(plan.choice, Choice::Auto);
        assert!(plan.parallel);
        assert!(plan.definitions.contains("\"get_weather\""));
        assert_eq!(
            parse(Some(vec![weather()]), Some(json!("none")), None).unwrap(),
            None
        );
        assert_eq!(parse(None, None, None).unwrap(), None);
    }

    #[test]
    fn a_named_choice_must_name_a_defined_function() {
        let named = |n: &str| json!({"type": "function", "function": {"name": n}});
        let plan = parse(
            Some(vec![weather()]),
            Some(named("get_weather")),
            Some(false),
        )
        .unwrap()
        .unwrap();
        assert_eq!(plan.choice, Choice::Named("get_weather".into()));
        assert!(!plan.parallel);
        let e = parse(Some(vec![weather()]), Some(named("other")), None).unwrap_err();
        assert_eq!(e.param(), Some("tool_choice"));
        let e = parse(None, Some(json!("required")), None).unwrap_err();
        assert_eq!(e.param(), Some("tool_choice"));
        let e = parse(Some(vec![weather()]), Some(json!("sometimes")), None).unwrap_err();
        assert_eq!(e.param(), Some("tool_choice"));
    }

    #[test]
    fn bad_tools_name_the_field() {
        let cases = [
            (json!({"type": "retrieval"}), "tools[0].type"),
            (json!({"type": "function"}), "tools[0].function"),
            (
                json!({"type": "function", "function": {"name": "a b"}}),
                "tools[0].function.name",
            ),
            (
                json!({"type": "function", "function": {"name": "<|im_start|>"}}),
                "tools[0].function.name",
            ),
            (
                json!({"type": "function", "function": {"name": "f", "parameters": [1]}}),
                "tools[0].function.parameters",
            ),
        ];
        for (tool, param) in cases {
            let e = parse(Some(vec![tool.clone()]), None, None).unwrap_err();
            assert_eq!(e.param(), Some(param), "{tool}");
        }
        let e = parse(Some(vec![weather(), weather()]), None, None).unwrap_err();
        assert_eq!(e.param(), Some("tools[1].function.name"));
        let many = vec![weather(); MAX_TOOLS + 1];
        assert_eq!(
            parse(Some(many), None, None).unwrap_err().param(),
            Some("tools")
        );
    }
}
