//! The output-format fields of a request (`response_format`, and the
//! `grammar` and `regex` extensions) turned into an [`OutputConstraint`].
//! Only their shape is checked here; the node compiles the grammar before
//! queuing anything and answers a 400 with the compiler's message when it
//! does not compile.

use backends::grammar::MAX_GRAMMAR_BYTES;
use protocol::OutputConstraint;
use serde_json::Value;

use super::errors::ApiError;

/// The constraint a request asks for, if any.
pub fn parse(
    response_format: Option<Value>,
    grammar: Option<String>,
    regex: Option<String>,
) -> Result<Option<OutputConstraint>, ApiError> {
    let mut asked = Vec::new();
    if let Some(format) = response_format {
        if let Some(c) = response_format_constraint(&format)? {
            asked.push(("response_format", c));
        }
    }
    if let Some(g) = grammar {
        asked.push(("grammar", OutputConstraint::Lark(bounded("grammar", g)?)));
    }
    if let Some(r) = regex {
        asked.push(("regex", OutputConstraint::Regex(bounded("regex", r)?)));
    }
    match asked.len() {
        0 => Ok(None),
        1 => Ok(asked.pop().map(|(_, c)| c)),
        _ => {
            let names: Vec<&str> = asked.iter().map(|(n, _)| *n).collect();
            Err(ApiError::invalid(
                format!(
                    "Only one of 'response_format' (json_object or json_schema), 'grammar' and \
                     'regex' may be given; this request has {}.",
                    names.join(" and ")
                ),
                Some(names[1]),
            ))
        }
    }
}

/// `{"type":"text"}`, `{"type":"json_object"}` or
/// `{"type":"json_schema","json_schema":{"name":…,"schema":{…},"strict":…}}`.
fn response_format_constraint(format: &Value) -> Result<Option<OutputConstraint>, ApiError> {
    let kind = format.get("type").and_then(Value::as_str).ok_or_else(|| {
        ApiError::invalid(
            "'response_format' must be an object with a string 'type' (text, json_object or \
             json_schema).",
            Some("response_format"),
        )
    })?;
    match kind {
        "text" => Ok(None),
        "json_object" => Ok(Some(OutputConstraint::JsonObject)),
        "json_schema" => {
            let param = "response_format.json_schema";
            let spec = format
                .get("json_schema")
                .filter(|v| v.is_object())
                .ok_or_else(|| {
                    ApiError::invalid(
                        format!("Missing required parameter: '{param}' (an object)."),
                        Some(param),
                    )
                })?;
            if let Some(name) = spec.get("name") {
                if !name.as_str().is_some_and(valid_name) {
                    return Err(ApiError::invalid(
                        format!(
                            "'{param}.name' must be 1-64 letters, digits, underscores or dashes."
                        ),
                        Some("response_format.json_schema.name"),
                    ));
                }
            }
            let schema = match spec.get("schema") {
                // OpenAI allows a schema-less json_schema: any JSON value.
                None => Value::Object(Default::default()),
                Some(s @ (Value::Object(_) | Value::Bool(_))) => s.clone(),
                Some(_) => {
                    return Err(ApiError::invalid(
                        format!("'{param}.schema' must be a JSON Schema object."),
                        Some("response_format.json_schema.schema"),
                    ))
                }
            };
            let text = schema.to_string();
            Ok(Some(OutputConstraint::JsonSchema(bounded(
                "response_format.json_schema.schema",
                text,
            )?)))
        }
        other => Err(ApiError::invalid(
            format!(
                "Invalid value for 'response_format.type': '{other}'; expected text, \
                 json_object or json_schema."
            ),
            Some("response_format.type"),
        )),
    }
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn bounded(param: &str, text: String) -> Result<String, ApiError> {
    if text.is_empty() {
        return Err(ApiError::invalid(
            format!("'{param}' must not be empty."),
            Some(param),
        ));
    }
    if text.len() > MAX_GRAMMAR_BYTES {
        return Err(ApiError::invalid(
            format!(
                "'{param}' is {} bytes; at most {MAX_GRAMMAR_BYTES} are accepted.",
                text.len()
            ),
            Some(param),
        ));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn param_of(e: ApiError) -> Option<String> {
        e.param().map(str::to_string)
    }

    #[test]
    fn text_format_is_no_constraint() {
        assert_eq!(
            parse(Some(json!({"type": "text"})), None, None).ok(),
            Some(None)
        );
        assert_eq!(parse(None, None, None).ok(), Some(None));
    }

    #[test]
    fn json_formats_become_constraints() {
        assert_eq!(
            parse(Some(json!({"type": "json_object"})), None, None).ok(),
            Some(Some(OutputConstraint::JsonObject))
        );
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        let format = json!({"type": "json_schema",
            "json_schema": {"name": "thing", "schema": schema, "strict": true}});
        assert_eq!(
            parse(Some(format), None, None).ok(),
            Some(Some(OutputConstraint::JsonSchema(schema.to_string())))
        );
        assert_eq!(
            parse(None, Some("start: \"a\"".into()), None).ok(),
            Some(Some(OutputConstraint::Lark("start: \"a\"".into())))
        );
        assert_eq!(
            parse(None, None, Some("[0-9]+".into())).ok(),
            Some(Some(OutputConstraint::Regex("[0-9]+".into())))
        );
    }

    #[test]
    fn malformed_formats_name_the_parameter() {
        let cases = [
            (json!("json"), "response_format"),
            (json!({"type": "yaml"}), "response_format.type"),
            (
                json!({"type": "json_schema"}),
                "response_format.json_schema",
            ),
            (
                json!({"type": "json_schema", "json_schema": {"schema": "x"}}),
                "response_format.json_schema.schema",
            ),
            (
                json!({"type": "json_schema", "json_schema": {"name": "a b", "schema": {}}}),
                "response_format.json_schema.name",
            ),
        ];
        for (format, param) in cases {
            let e = parse(Some(format.clone()), None, None).expect_err("refused");
            assert_eq!(param_of(e).as_deref(), Some(param), "{format}");
        }
    }

    #[test]
    fn two_constraints_at_once_are_refused() {
        let e = parse(
            Some(json!({"type": "json_object"})),
            Some("start: \"a\"".into()),
            None,
        )
        .expect_err("refused");
        assert_eq!(param_of(e).as_deref(), Some("grammar"));
    }

    #[test]
    fn oversized_grammars_are_refused() {
        let e = parse(None, Some("a".repeat(MAX_GRAMMAR_BYTES + 1)), None).expect_err("refused");
        assert_eq!(param_of(e).as_deref(), Some("grammar"));
    }
}
