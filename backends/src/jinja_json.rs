//! The `tojson` filter as Hugging Face's chat templates expect it: Python's
//! `json.dumps(x, ensure_ascii=False, indent=indent)`, keys in their given
//! order, `", "` and `": "` between items, and no HTML escaping (minijinja's
//! own `tojson` sorts keys, writes compactly and escapes `<`, `>`, `&` and
//! `'`, so a template would show a model its tools in a form it was never
//! trained on).

use std::io;

use minijinja::value::{Kwargs, Value};
use minijinja::{Error, ErrorKind};
use serde::Serialize;
use serde_json::ser::{Formatter, PrettyFormatter, Serializer};

/// Deepest indent accepted, in spaces.
const MAX_INDENT: usize = 16;

/// `value | tojson` or `value | tojson(indent=N)`.
pub(crate) fn tojson(value: Value, indent: Option<usize>, kwargs: Kwargs) -> Result<Value, Error> {
    let indent = match kwargs.get::<Option<usize>>("indent")? {
        Some(n) => Some(n),
        None => indent,
    };
    kwargs.assert_all_used()?;
    let mut out = Vec::new();
    let written = match indent {
        None => value.serialize(&mut Serializer::with_formatter(&mut out, PythonCompact)),
        Some(n) => {
            let spaces = " ".repeat(n.min(MAX_INDENT));
            let pretty = PrettyFormatter::with_indent(spaces.as_bytes());
            value.serialize(&mut Serializer::with_formatter(&mut out, pretty))
        }
    };
    written.map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let text = String::from_utf8(out)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    Ok(Value::from(text))
}

/// Python's default separators: `", "` between items, `": "` after keys.
struct PythonCompact;

impl Formatter for PythonCompact {
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        item_separator(w, first)
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        item_separator(w, first)
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }
}

/// `", "` before every item but the first.
fn item_separator<W: ?Sized + io::Write>(w: &mut W, first: bool) -> io::Result<()> {
    if first {
        Ok(())
    } else {
        w.write_all(b", ")
    }
}

#[cfg(test)]
mod tests {
    use minijinja::Environment;

    fn render(template: &str, value: serde_json::Value) -> String {
        let mut env = Environment::new();
        env.add_filter("tojson", super::tojson);
        env.render_str(template, minijinja::context! { v => value })
            .unwrap()
    }

    #[test]
    fn it_writes_what_python_writes() {
        let v = serde_json::json!({"type": "function", "b": [1, "<é>"], "a": {"x": null}});
        assert_eq!(
            render("{{ v | tojson }}", v.clone()),
            r#"{"type": "function", "b": [1, "<é>"], "a": {"x": null}}"#
        );
        assert_eq!(
            render("{{ v.a | tojson(indent=2) }}", v),
            "{\n  \"x\": null\n}"
        );
    }
}
