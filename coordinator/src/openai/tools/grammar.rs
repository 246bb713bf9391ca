//! The grammar a tool call must follow, per format: with `required` or a
//! named function the whole answer is calls; with `auto` the answer is
//! either calls, or free text that may end in calls. Either way the answer
//! may also be one call written without its tags, as small Qwen models
//! write them (so with `auto` a text answer cannot start with `{`).
//!
//! A call's JSON is `{"name": <one of the functions>, "arguments": <an
//! object valid under that function's schema>}`, written compactly, name
//! first (as the models were trained to write it).

use protocol::{OutputConstraint, ToolFormat};
use serde_json::{json, Value};

use super::spec::{Choice, ToolPlan};

/// The constraint that keeps `plan`'s calls well-formed in `format`.
pub(crate) fn constraint(plan: &ToolPlan, format: ToolFormat) -> OutputConstraint {
    let functions: Vec<Value> = plan
        .functions
        .iter()
        .filter(|f| match &plan.choice {
            Choice::Named(n) => &f.name == n,
            Choice::Auto | Choice::Required => true,
        })
        .map(|f| {
            json!({
                "type": "object",
                "properties": {
                    "name": {"const": f.name},
                    "arguments": f.parameters,
                },
                "required": ["name", "arguments"],
                "additionalProperties": false,
            })
        })
        .collect();
    let schema = json!({
        "anyOf": functions,
        "x-guidance": {
            "item_separator": ", ",
            "key_separator": ": ",
            "whitespace_flexible": false,
        },
    });
    match format {
        ToolFormat::Hermes => {
            let calls = if plan.parallel {
                "call (\"\\n\" call)*"
            } else {
                "call"
            };
            let (start, text) = match plan.choice {
                Choice::Auto => (
                    "calls | body | TEXT | TEXT calls",
                    "TEXT: /[^{\\s](?s:.)*/\n",
                ),
                Choice::Required | Choice::Named(_) => ("calls | body", ""),
            };
            OutputConstraint::Lark(format!(
                "start: {start}\n\
                 calls: {calls}\n\
                 call: <tool_call> \"\\n\" body \"\\n\" </tool_call>\n\
                 body: %json {schema}\n{text}"
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::spec;
    use super::*;

    fn plan(choice: Value, parallel: bool) -> ToolPlan {
        let tools = vec![
            json!({"type": "function", "function": {"name": "a", "parameters":
                {"type": "object", "properties": {"x": {"type": "integer"}}}}}),
            json!({"type": "function", "function": {"name": "b"}}),
        ];
        spec::parse(Some(tools), Some(choice), Some(parallel))
            .unwrap()
            .unwrap()
    }

    #[test]
    fn auto_allows_text_and_required_allows_only_calls() {
        let OutputConstraint::Lark(auto) =
            constraint(&plan(json!("auto"), true), ToolFormat::Hermes)
        else {
            panic!("expected a Lark grammar");
        };
        assert!(
            auto.starts_with(
                "start: calls | body | TEXT | TEXT calls\ncalls: call (\"\\n\" call)*\n"
            ),
            "{auto}"
        );
        assert!(auto.contains("TEXT: /[^{\\s](?s:.)*/"), "{auto}");
        let OutputConstraint::Lark(required) =
            constraint(&plan(json!("required"), false), ToolFormat::Hermes)
        else {
            panic!("expected a Lark grammar");
        };
        assert!(
            required.starts_with("start: calls | body\ncalls: call\n"),
            "{required}"
        );
        assert!(!required.contains("TEXT"), "{required}");
        assert!(required.contains("{\"const\":\"a\"}") && required.contains("{\"const\":\"b\"}"));
    }

    #[test]
    fn a_named_choice_allows_only_that_function() {
        let named = json!({"type": "function", "function": {"name": "b"}});
        let OutputConstraint::Lark(grammar) = constraint(&plan(named, true), ToolFormat::Hermes)
        else {
            panic!("expected a Lark grammar");
        };
        assert!(grammar.contains("{\"const\":\"b\"}"));
        assert!(!grammar.contains("{\"const\":\"a\"}"));
    }
}
