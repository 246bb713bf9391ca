//! Prompt prefixes as text spans, so that a coordinator can tell which node
//! already holds a request's prefix in its KV cache without tokenizing.
//!
//! The prompt is laid out in a canonical byte form (a chat as its roles and
//! contents in order, raw text as itself) and cut into [`SPAN_BYTES`]-byte
//! spans; span `i`'s hash chains over the cache salt and every byte up to
//! the end of span `i`. Two prompts that share their first `n` spans share
//! their first `n` hashes. Nodes report the span hashes whose KV blocks they
//! still hold; coordinators hash each request the same way and count the
//! leading spans a node reports (the approximate scorer of llm-d, in text
//! space: coordinators hold no tokenizer).

use crate::inference::Prompt;

/// Bytes of canonical prompt text per span (about 64 tokens of English).
pub const SPAN_BYTES: usize = 256;

/// Most spans hashed per prompt (the first 64 KiB of its canonical form).
pub const MAX_PROMPT_SPANS: usize = 256;

/// Most span hashes a node reports per model in one heartbeat.
pub const MAX_REPORTED_SPANS: usize = 1024;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// Final mixing so that chained FNV states spread over all 64 bits.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// The canonical bytes of a prompt, in pieces, in order.
fn pieces(prompt: &Prompt) -> Vec<&[u8]> {
    match prompt {
        Prompt::Text(t) => vec![b"T", t.as_bytes()],
        Prompt::Chat(messages) => {
            let mut out: Vec<&[u8]> = vec![b"C"];
            for m in messages {
                out.extend([m.role.as_bytes(), b"\x1f", m.content.as_bytes()]);
                for call in &m.tool_calls {
                    out.extend([
                        b"\x1d",
                        call.name.as_bytes(),
                        b"\x1f",
                        call.arguments.as_bytes(),
                    ]);
                }
                out.push(b"\x1e");
            }
            out
        }
    }
}

/// Length of the prompt's canonical form in bytes.
pub fn canonical_len(prompt: &Prompt) -> usize {
    pieces(prompt).iter().map(|p| p.len()).sum()
}

/// The hashes of the prompt's full spans (at most [`MAX_PROMPT_SPANS`]),
/// chained from `salt`.
pub fn span_hashes(prompt: &Prompt, salt: &str) -> Vec<u64> {
    let mut state = fnv(fnv(FNV_OFFSET, b"inferno-span"), salt.as_bytes());
    let mut out = Vec::new();
    let mut in_span = 0;
    for piece in pieces(prompt) {
        let mut rest = piece;
        while !rest.is_empty() {
            let take = (SPAN_BYTES - in_span).min(rest.len());
            state = fnv(state, &rest[..take]);
            in_span += take;
            rest = &rest[take..];
            if in_span == SPAN_BYTES {
                out.push(mix(state));
                in_span = 0;
                if out.len() == MAX_PROMPT_SPANS {
                    return out;
                }
            }
        }
    }
    out
}

/// How many of `spans` lead the prompt, in order, according to `holds`.
pub fn leading_matches(spans: &[u64], holds: impl Fn(u64) -> bool) -> usize {
    spans.iter().take_while(|h| holds(**h)).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ChatMessage;

    fn chat(system: &str, user: &str) -> Prompt {
        Prompt::Chat(vec![
            ChatMessage::new("system", system),
            ChatMessage::new("user", user),
        ])
    }

    #[test]
    fn prompts_sharing_a_prefix_share_its_span_hashes() {
        let system = "You are a helpful assistant. ".repeat(40); // 1,160 bytes
        let a = span_hashes(&chat(&system, "What is the capital of France?"), "");
        let b = span_hashes(&chat(&system, "Write a haiku."), "");
        assert_eq!(a.len(), 4);
        assert_eq!(a[..4], b[..4]);
        let other = span_hashes(&chat(&"Be terse. ".repeat(120), "Write a haiku."), "");
        assert_ne!(a[0], other[0]);
    }

    #[test]
    fn the_salt_and_the_prompt_kind_change_every_hash() {
        let text = "x".repeat(600);
        let plain = span_hashes(&Prompt::Text(text.clone()), "");
        let salted = span_hashes(&Prompt::Text(text.clone()), "tenant-a");
        assert_eq!(plain.len(), 2);
        assert!(plain.iter().zip(&salted).all(|(a, b)| a != b));
        let as_chat = span_hashes(&Prompt::Chat(vec![ChatMessage::new("user", text)]), "");
        assert_ne!(plain[0], as_chat[0]);
    }

    #[test]
    fn short_prompts_have_no_spans_and_long_ones_are_capped() {
        assert!(span_hashes(&Prompt::Text("hello".into()), "").is_empty());
        let long = Prompt::Text("y".repeat(SPAN_BYTES * (MAX_PROMPT_SPANS + 10)));
        assert_eq!(span_hashes(&long, "").len(), MAX_PROMPT_SPANS);
        assert_eq!(
            canonical_len(&long),
            1 + SPAN_BYTES * (MAX_PROMPT_SPANS + 10)
        );
    }

    #[test]
    fn leading_matches_stop_at_the_first_miss() {
        let held = [1u64, 2, 4];
        assert_eq!(leading_matches(&[1, 2, 3, 4], |h| held.contains(&h)), 2);
        assert_eq!(leading_matches(&[3, 1], |h| held.contains(&h)), 0);
    }
}
