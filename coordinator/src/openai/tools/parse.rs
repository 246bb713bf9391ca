//! Tool calls parsed out of a Hermes-format answer, as it streams:
//! `<tool_call>\n{"name": "f", "arguments": {...}}\n</tool_call>`, one or
//! more, possibly after some text; or one call without its tags, when the
//! answer starts with `{` (small Qwen models write calls so; the tool
//! grammar holds such an answer to the call's schema).
//!
//! Text reaches the parser in arbitrary pieces (a piece may end inside
//! `<tool_call>`, inside the call's JSON or inside `</tool_call>`), and the
//! parser emits [`ToolEvent`]s as soon as they are certain: content up to
//! where a call might begin, a call's name once its header is complete, and
//! its arguments as they grow, holding back only what might turn out to be
//! the end of the call. The same events, collected, make the non-streaming
//! answer ([`collect`]), so both forms always agree.
//!
//! Whatever does not parse as a call (an unclosed call whose header never
//! completed, a body that is not a call object) is given back as content:
//! nothing the model wrote is lost.

use serde_json::Value;

use super::super::dispatch::response_id;

/// Opens a Hermes call.
const OPEN: &str = "<tool_call>";
/// Closes a Hermes call.
const CLOSE: &str = "</tool_call>";
/// What a call's body starts with, up to the name's opening quote.
const NAME_KEY: &str = "\"name\"";
/// The key after the name.
const ARGUMENTS_KEY: &str = "\"arguments\"";

/// Something certain about the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ToolEvent {
    /// Text outside any call.
    Content(String),
    /// Call number `index` (from 0) began, calling `name`.
    CallStart {
        /// Position of the call in the answer.
        index: u32,
        /// Its id (`call_...`).
        id: String,
        /// The function called.
        name: String,
    },
    /// More of call `index`'s arguments (JSON text).
    CallArgs {
        /// Position of the call in the answer.
        index: u32,
        /// The next piece of the arguments.
        delta: String,
    },
}

/// One complete call, as the non-streaming answer lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParsedCall {
    /// Its id (`call_...`).
    pub id: String,
    /// The function called.
    pub name: String,
    /// The arguments, JSON text.
    pub arguments: String,
}

/// Where the parser is.
#[derive(Debug)]
enum Phase {
    /// Outside calls; `pending` holds text that might begin a call, or
    /// whitespace that might precede one.
    Text,
    /// Inside a call whose header (`{"name": "f", "arguments": `) is not
    /// complete yet; `pending` holds the body so far.
    Header,
    /// Inside call `index`, streaming its arguments: `pending` holds the
    /// arguments so far, of which the first `sent` bytes went out.
    Arguments {
        /// The call's position.
        index: u32,
        /// Bytes of `pending` already emitted.
        sent: usize,
    },
    /// Inside a call whose body does not start like a call object:
    /// `pending` holds it, parsed whole at `</tool_call>`.
    Whole,
}

/// The streaming parser of one answer.
#[derive(Debug)]
pub(crate) struct ToolCallParser {
    phase: Phase,
    pending: String,
    calls: u32,
    /// Whether the answer's first non-blank character was seen.
    opened: bool,
    /// Whether the call being read came without tags (it ends with the
    /// answer).
    bare: bool,
}

impl Default for ToolCallParser {
    fn default() -> Self {
        Self::new()
    }
}

impl ToolCallParser {
    /// A parser at the start of an answer.
    pub(crate) fn new() -> Self {
        Self {
            phase: Phase::Text,
            pending: String::new(),
            calls: 0,
            opened: false,
            bare: false,
        }
    }

    /// Calls started so far.
    pub(crate) fn calls(&self) -> u32 {
        self.calls
    }

    /// Feeds the next piece of the answer.
    pub(crate) fn push(&mut self, text: &str) -> Vec<ToolEvent> {
        self.pending.push_str(text);
        let mut out = Vec::new();
        while self.step(&mut out) {}
        out
    }

    /// Ends the answer: everything held back goes out.
    pub(crate) fn finish(&mut self) -> Vec<ToolEvent> {
        let mut out = Vec::new();
        while self.step(&mut out) {}
        let rest = std::mem::take(&mut self.pending);
        match std::mem::replace(&mut self.phase, Phase::Text) {
            Phase::Text => {
                // Whitespace after the last call is the separator the model
                // would have continued with, not content.
                if !(self.calls > 0 && rest.trim().is_empty()) {
                    content(&mut out, rest);
                }
            }
            Phase::Header | Phase::Whole if self.bare => self.whole_call(&mut out, &rest),
            Phase::Header | Phase::Whole => content(&mut out, format!("{OPEN}{rest}")),
            Phase::Arguments { index, sent } => {
                // Cut off (max_tokens): the arguments so far, without the
                // object's closing brace if it came.
                let end = arguments_end(&rest).max(sent);
                if end > sent {
                    out.push(ToolEvent::CallArgs {
                        index,
                        delta: rest[sent..end].to_string(),
                    });
                }
            }
        }
        out
    }

    /// Makes one step of progress; `false` when nothing more is certain.
    fn step(&mut self, out: &mut Vec<ToolEvent>) -> bool {
        match self.phase {
            Phase::Text => self.step_text(out),
            Phase::Header => self.step_header(out),
            Phase::Arguments { index, sent } => self.step_arguments(out, index, sent),
            Phase::Whole => self.step_whole(out),
        }
    }

    fn step_text(&mut self, out: &mut Vec<ToolEvent>) -> bool {
        if !self.opened {
            let start = self.pending.trim_start();
            if start.is_empty() {
                return false;
            }
            self.opened = true;
            if start.starts_with('{') {
                self.pending = start.to_string();
                self.bare = true;
                self.phase = Phase::Header;
                return true;
            }
        }
        if let Some(at) = self.pending.find(OPEN) {
            let before = self.pending[..at].trim_end().to_string();
            let after = self.pending[at + OPEN.len()..].to_string();
            content(out, before);
            self.pending = after;
            self.phase = Phase::Header;
            return true;
        }
        // Hold back what may begin a call, and the whitespace before it.
        let keep = partial_suffix(&self.pending, OPEN);
        let emit_end = self.pending[..keep].trim_end().len();
        if emit_end > 0 {
            let emitted: String = self.pending.drain(..emit_end).collect();
            content(out, emitted);
        }
        false
    }

    fn step_header(&mut self, out: &mut Vec<ToolEvent>) -> bool {
        let close = self.close();
        match header(&self.pending[..close.unwrap_or(self.pending.len())]) {
            Header::Incomplete => match close {
                // The call closed before its header did: read it whole.
                Some(at) => {
                    let body = self.pending[..at].to_string();
                    self.pending.drain(..at + CLOSE.len());
                    self.phase = Phase::Text;
                    self.whole_call(out, &body);
                    true
                }
                None => false,
            },
            Header::Mismatch => {
                self.phase = Phase::Whole;
                true
            }
            Header::Complete { name, len } => {
                let index = self.start_call(out, name);
                self.pending.drain(..len);
                self.phase = Phase::Arguments { index, sent: 0 };
                true
            }
        }
    }

    fn step_arguments(&mut self, out: &mut Vec<ToolEvent>, index: u32, sent: usize) -> bool {
        if let Some(at) = self.close() {
            let end = arguments_end(&self.pending[..at]).max(sent);
            if end > sent {
                out.push(ToolEvent::CallArgs {
                    index,
                    delta: self.pending[sent..end].to_string(),
                });
            }
            self.pending.drain(..at + CLOSE.len());
            self.phase = Phase::Text;
            return true;
        }
        // Hold back a partial `</tool_call>`, the whitespace before it and
        // the brace that may close the call object.
        let keep = if self.bare {
            self.pending.len()
        } else {
            partial_suffix(&self.pending, CLOSE)
        };
        let end = arguments_end(&self.pending[..keep]).max(sent);
        if end > sent {
            out.push(ToolEvent::CallArgs {
                index,
                delta: self.pending[sent..end].to_string(),
            });
            self.phase = Phase::Arguments { index, sent: end };
        }
        false
    }

    fn step_whole(&mut self, out: &mut Vec<ToolEvent>) -> bool {
        let Some(at) = self.close() else {
            return false;
        };
        let body = self.pending[..at].to_string();
        self.pending.drain(..at + CLOSE.len());
        self.phase = Phase::Text;
        self.whole_call(out, &body);
        true
    }

    /// Announces the next call, calling `name`; its index.
    fn start_call(&mut self, out: &mut Vec<ToolEvent>, name: String) -> u32 {
        let index = self.calls;
        self.calls += 1;
        out.push(ToolEvent::CallStart {
            index,
            id: response_id("call_"),
            name,
        });
        index
    }

    /// Where the call being read closes, if it has; a call without tags
    /// closes only with the answer.
    fn close(&self) -> Option<usize> {
        if self.bare {
            None
        } else {
            self.pending.find(CLOSE)
        }
    }

    /// A complete call body read at once: a call if it is a call object,
    /// content (with its tags) otherwise.
    fn whole_call(&mut self, out: &mut Vec<ToolEvent>, body: &str) {
        let parsed: Option<(String, String)> = serde_json::from_str::<Value>(body.trim())
            .ok()
            .and_then(|v| {
                let name = v.get("name")?.as_str()?.to_string();
                let arguments = match v.get("arguments") {
                    None | Some(Value::Null) => "{}".to_string(),
                    Some(Value::String(s)) => s.clone(),
                    Some(a @ Value::Object(_)) => a.to_string(),
                    Some(_) => return None,
                };
                Some((name, arguments))
            });
        match parsed {
            Some((name, arguments)) => {
                let index = self.start_call(out, name);
                out.push(ToolEvent::CallArgs {
                    index,
                    delta: arguments,
                });
            }
            None if self.bare => content(out, body.to_string()),
            None => content(out, format!("{OPEN}{body}{CLOSE}")),
        }
    }
}

/// Pushes non-empty content, merged with content just before it.
fn content(out: &mut Vec<ToolEvent>, text: String) {
    if text.is_empty() {
        return;
    }
    if let Some(ToolEvent::Content(last)) = out.last_mut() {
        last.push_str(&text);
    } else {
        out.push(ToolEvent::Content(text));
    }
}

/// Where the longest suffix of `text` that is a proper prefix of `tag`
/// starts (`text.len()` when there is none).
fn partial_suffix(text: &str, tag: &str) -> usize {
    (1..tag.len())
        .rev()
        .filter(|&n| n <= text.len())
        .find(|&n| {
            text.is_char_boundary(text.len() - n) && tag.starts_with(&text[text.len() - n..])
        })
        .map_or(text.len(), |n| text.len() - n)
}

/// How much of a call's text after its header is arguments: all but
/// trailing whitespace and the brace that closes the call object.
fn arguments_end(after_header: &str) -> usize {
    let trimmed = after_header.trim_end();
    match trimmed.strip_suffix('}') {
        Some(without) => without.trim_end().len(),
        None => trimmed.len(),
    }
}

/// How far a call body matches `{"name": "f", "arguments": `.
#[derive(Debug, PartialEq, Eq)]
enum Header {
    /// It may still match.
    Incomplete,
    /// It cannot match.
    Mismatch,
    /// It matched: the name, and the header's length in bytes.
    Complete { name: String, len: usize },
}

/// Skips whitespace and `lit` at the start of `rest`: `Some(true)` when it
/// is there, `None` when `rest` ends inside it, `Some(false)` otherwise.
fn literal(rest: &mut &str, lit: &str) -> Option<bool> {
    *rest = rest.trim_start();
    if rest.starts_with(lit) {
        *rest = &rest[lit.len()..];
        Some(true)
    } else if lit.starts_with(*rest) {
        None
    } else {
        Some(false)
    }
}

fn header(body: &str) -> Header {
    let mut rest = body;
    for lit in ["{", NAME_KEY, ":"] {
        match literal(&mut rest, lit) {
            None => return Header::Incomplete,
            Some(false) => return Header::Mismatch,
            Some(true) => {}
        }
    }
    rest = rest.trim_start();
    let Some(quoted) = rest.strip_prefix('"') else {
        return if rest.is_empty() {
            Header::Incomplete
        } else {
            Header::Mismatch
        };
    };
    let Some(close) = quoted.find('"') else {
        return if quoted.contains('\\') {
            Header::Mismatch
        } else {
            Header::Incomplete
        };
    };
    let name = &quoted[..close];
    if name.contains('\\') {
        return Header::Mismatch;
    }
    rest = &quoted[close + 1..];
    for lit in [",", ARGUMENTS_KEY, ":"] {
        match literal(&mut rest, lit) {
            None => return Header::Incomplete,
            Some(false) => return Header::Mismatch,
            Some(true) => {}
        }
    }
    // The arguments must have begun, so that the whitespace before them is
    // part of the header.
    let args = rest.trim_start();
    if args.is_empty() {
        return Header::Incomplete;
    }
    if !args.starts_with('{') {
        return Header::Mismatch;
    }
    Header::Complete {
        name: name.to_string(),
        len: body.len() - args.len(),
    }
}

/// The content and calls of a whole answer.
pub(crate) fn collect(text: &str) -> (Option<String>, Vec<ParsedCall>) {
    let mut parser = ToolCallParser::new();
    let mut events = parser.push(text);
    events.extend(parser.finish());
    let mut content = String::new();
    let mut calls: Vec<ParsedCall> = Vec::new();
    for event in events {
        match event {
            ToolEvent::Content(text) => content.push_str(&text),
            ToolEvent::CallStart { id, name, .. } => calls.push(ParsedCall {
                id,
                name,
                arguments: String::new(),
            }),
            ToolEvent::CallArgs { index, delta } => {
                if let Some(call) = calls.get_mut(index as usize) {
                    call.arguments.push_str(&delta);
                }
            }
        }
    }
    let content = (!content.is_empty()).then_some(content);
    (content, calls)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `text` in pieces of `piece` bytes (at char boundaries) and
    /// reassembles what came out.
    fn streamed(text: &str, piece: usize) -> (Option<String>, Vec<(String, String)>) {
        let mut parser = ToolCallParser::new();
        let mut events = Vec::new();
        let mut start = 0;
        while start < text.len() {
            let mut end = (start + piece).min(text.len());
            while !text.is_char_boundary(end) {
                end += 1;
            }
            events.extend(parser.push(&text[start..end]));
            start = end;
        }
        events.extend(parser.finish());
        let mut content = String::new();
        let mut calls: Vec<(String, String)> = Vec::new();
        for e in events {
            match e {
                ToolEvent::Content(t) => content.push_str(&t),
                ToolEvent::CallStart { index, name, id } => {
                    assert_eq!(index as usize, calls.len());
                    assert!(id.starts_with("call_"));
                    calls.push((name, String::new()));
                }
                ToolEvent::CallArgs { index, delta } => calls[index as usize].1.push_str(&delta),
            }
        }
        ((!content.is_empty()).then_some(content), calls)
    }

    fn every_split(text: &str) -> (Option<String>, Vec<(String, String)>) {
        let whole = streamed(text, text.len().max(1));
        for piece in 1..=12 {
            assert_eq!(
                streamed(text, piece),
                whole,
                "pieces of {piece} bytes: {text:?}"
            );
        }
        whole
    }

    #[test]
    fn plain_text_is_content_however_it_is_split() {
        let (content, calls) = every_split("The answer is 4 < 5, see <tool> and tool_call.\n");
        assert_eq!(
            content.as_deref(),
            Some("The answer is 4 < 5, see <tool> and tool_call.\n")
        );
        assert!(calls.is_empty());
    }

    #[test]
    fn one_call_streams_to_its_name_and_arguments() {
        let text = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": {\"n\": 3}}}\n</tool_call>";
        let (content, calls) = every_split(text);
        assert_eq!(content, None);
        assert_eq!(
            calls,
            vec![(
                "get_weather".to_string(),
                "{\"city\": \"Paris\", \"days\": {\"n\": 3}}".to_string()
            )]
        );
    }

    #[test]
    fn parallel_calls_after_text_drop_the_separators() {
        let text = "Let me check.\n<tool_call>\n{\"name\": \"a\", \"arguments\": {}}\n</tool_call>\n<tool_call>\n{\"name\": \"b\", \"arguments\": {\"x\": \"}\"}}\n</tool_call>\n";
        let (content, calls) = every_split(text);
        assert_eq!(content.as_deref(), Some("Let me check."));
        assert_eq!(
            calls,
            vec![
                ("a".to_string(), "{}".to_string()),
                ("b".to_string(), "{\"x\": \"}\"}".to_string())
            ]
        );
    }

    #[test]
    fn a_body_in_another_key_order_is_parsed_whole() {
        let text = "<tool_call>{\"arguments\": {\"q\": 1}, \"name\": \"search\"}</tool_call>";
        let (content, calls) = every_split(text);
        assert_eq!(content, None);
        assert_eq!(calls, vec![("search".to_string(), "{\"q\":1}".to_string())]);
    }

    #[test]
    fn what_is_not_a_call_comes_back_as_content() {
        let text = "<tool_call>not json</tool_call> and (<tool_call>{\"name\"";
        let (content, calls) = every_split(text);
        assert_eq!(content.as_deref(), Some(text));
        assert!(calls.is_empty());
    }

    #[test]
    fn an_answer_that_opens_with_json_is_one_call_without_tags() {
        let text = "  {\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}";
        assert_eq!(
            every_split(text),
            (
                None,
                vec![(
                    "get_weather".to_string(),
                    "{\"city\": \"Paris\"}".to_string()
                )]
            )
        );
        // Not a call object: the text as it was.
        let text = "{\"answer\": 42}";
        assert_eq!(every_split(text), (Some(text.to_string()), vec![]));
        // A brace later in a text answer is just text.
        let text = "Use {\"name\": \"x\", \"arguments\": {}} as input.";
        assert_eq!(every_split(text), (Some(text.to_string()), vec![]));
    }

    #[test]
    fn a_call_cut_off_keeps_the_arguments_it_has() {
        let text = "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": [1, 2";
        let (content, calls) = every_split(text);
        assert_eq!(content, None);
        assert_eq!(calls, vec![("f".to_string(), "{\"a\": [1, 2".to_string())]);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Whatever the model writes, however it is split: no panic, and
        /// the streamed events reassemble to what the whole text gives.
        #[test]
        fn any_text_streams_to_what_the_whole_gives(
            parts in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::strategy::Just("<tool_call>".to_string()),
                    proptest::strategy::Just("</tool_call>".to_string()),
                    proptest::strategy::Just("{\"name\": \"f\", \"arguments\": ".to_string()),
                    proptest::strategy::Just("}".to_string()),
                    "[ -~\\n\u{e9}]{0,8}",
                ],
                0..12,
            ),
            piece in 1usize..9,
        ) {
            let text: String = parts.concat();
            let whole = streamed(&text, text.len().max(1));
            proptest::prop_assert_eq!(streamed(&text, piece), whole);
        }
    }

    #[test]
    fn collect_gives_ids_and_no_content_for_calls_only() {
        let (content, calls) =
            collect("<tool_call>\n{\"name\": \"f\", \"arguments\": {\"k\": \"é\"}}\n</tool_call>");
        assert_eq!(content, None);
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].name, "f");
        assert_eq!(calls[0].arguments, "{\"k\": \"é\"}");
        assert!(calls[0].id.starts_with("call_") && calls[0].id.len() == 29);
    }
}
