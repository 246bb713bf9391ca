//! Stop strings for streamed text.
//!
//! Text is decoded a few tokens at a time, so a stop string can be split over
//! several chunks. [`StopMatcher`] holds back the tail of the text that could
//! still turn into a stop string, emits everything else, and once a stop
//! string matches it emits only the text before the match and nothing after.

/// Watches streamed text for stop strings, which are never emitted.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    /// The stop strings, empty ones removed.
    stops: Vec<String>,
    /// Length in bytes of the longest stop string.
    max_len: usize,
    /// Text received but not emitted yet: always a prefix of some stop string
    /// between calls.
    pending: String,
    /// Whether a stop string has matched; nothing more is emitted after that.
    stopped: bool,
}

/// What [`StopMatcher::push`] lets the caller emit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StopOutcome {
    /// Text that is safe to emit now (possibly empty).
    pub emit: String,
    /// A stop string matched: `emit` ends right before it and generation
    /// should end.
    pub stopped: bool,
}

impl StopMatcher {
    /// A matcher for the given stop strings; empty strings are ignored.
    pub fn new(stops: &[String]) -> Self {
        let stops: Vec<String> = stops.iter().filter(|s| !s.is_empty()).cloned().collect();
        let max_len = stops.iter().map(String::len).max().unwrap_or(0);
        Self {
            stops,
            max_len,
            pending: String::new(),
            stopped: false,
        }
    }

    /// Whether a stop string has already matched.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Feeds newly decoded text and returns what is safe to emit now.
    ///
    /// The longest suffix of the text seen so far that is a prefix of a stop
    /// string is held back until it either completes a stop string (it is
    /// then dropped, `stopped` is set and `emit` holds only the text before
    /// the match) or can no longer become one (it is then emitted). When
    /// several stop strings match, the one that starts earliest wins. After a
    /// stop, every later call emits nothing and reports `stopped`.
    pub fn push(&mut self, text: &str) -> StopOutcome {
        if self.stopped {
            return StopOutcome {
                emit: String::new(),
                stopped: true,
            };
        }
        if self.stops.is_empty() {
            return StopOutcome {
                emit: text.to_owned(),
                stopped: false,
            };
        }
        self.pending.push_str(text);

        // The earliest match of any stop string. Held-back text is the longest
        // suffix that prefixes a stop string, so no match can start before it.
        let earliest = self
            .stops
            .iter()
            .filter_map(|stop| self.pending.find(stop.as_str()))
            .min();
        if let Some(pos) = earliest {
            self.pending.truncate(pos);
            self.stopped = true;
            return StopOutcome {
                emit: std::mem::take(&mut self.pending),
                stopped: true,
            };
        }

        let hold_from = self.held_suffix_start();
        let held = self.pending.split_off(hold_from);
        let emit = std::mem::replace(&mut self.pending, held);
        StopOutcome {
            emit,
            stopped: false,
        }
    }

    /// Ends the stream: returns whatever is still held back (a partial stop
    /// string that never completed), or nothing after a stop matched.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }

    /// Byte offset (a char boundary) where the longest suffix of `pending`
    /// that is a proper prefix of some stop string begins; `pending.len()`
    /// when there is none.
    fn held_suffix_start(&self) -> usize {
        let len = self.pending.len();
        // A held suffix is shorter than the longest stop string (a full stop
        // string would have matched already).
        let window_start = len.saturating_sub(self.max_len.saturating_sub(1));
        self.pending
            .char_indices()
            .map(|(i, _)| i)
            .skip_while(|&i| i < window_start)
            .find(|&i| {
                let suffix = &self.pending[i..];
                self.stops.iter().any(|stop| stop.starts_with(suffix))
            })
            .unwrap_or(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(stops: &[&str]) -> StopMatcher {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        StopMatcher::new(&stops)
    }

    /// Feeds all chunks and returns everything emitted, whether it stopped,
    /// and the flushed rest.
    fn run(m: &mut StopMatcher, chunks: &[&str]) -> (String, bool) {
        let mut out = String::new();
        let mut stopped = false;
        for chunk in chunks {
            let o = m.push(chunk);
            out.push_str(&o.emit);
            stopped |= o.stopped;
        }
        out.push_str(&m.flush());
        (out, stopped)
    }

    #[test]
    fn no_stops_is_passthrough() {
        let mut m = matcher(&[]);
        for chunk in ["Hel", "lo", " wörld", ""] {
            let o = m.push(chunk);
            assert_eq!(o.emit, chunk);
            assert!(!o.stopped);
        }
        assert_eq!(m.flush(), "");
        assert!(!m.is_stopped());
    }

    #[test]
    fn empty_stop_strings_are_ignored() {
        let mut m = matcher(&["", ""]);
        let o = m.push("abc");
        assert_eq!(o.emit, "abc");
        assert!(!o.stopped);
    }

    #[test]
    fn stop_inside_one_chunk() {
        let mut m = matcher(&["STOP"]);
        let o = m.push("hello STOP world");
        assert_eq!(o.emit, "hello ");
        assert!(o.stopped);
        assert!(m.is_stopped());
        assert_eq!(m.flush(), "");
    }

    #[test]
    fn stop_spanning_chunks() {
        let mut m = matcher(&["lo W"]);
        let a = m.push("Hel");
        assert_eq!(a.emit, "He", "'l' may start the stop string");
        assert!(!a.stopped);
        let b = m.push("lo W");
        assert_eq!(b.emit, "l");
        assert!(b.stopped);
        let c = m.push("orld");
        assert_eq!(c.emit, "");
        assert!(c.stopped);
        assert_eq!(m.flush(), "");
    }

    #[test]
    fn stop_split_over_many_chunks() {
        let mut m = matcher(&["</end>"]);
        let (out, stopped) = run(&mut m, &["abc<", "/", "en", "d>", "tail"]);
        assert_eq!(out, "abc");
        assert!(stopped);
    }

    #[test]
    fn held_prefix_that_is_not_a_stop_is_emitted_later() {
        let mut m = matcher(&["lo W"]);
        let a = m.push("Hello");
        assert_eq!(a.emit, "Hel");
        let b = m.push(" there");
        assert_eq!(b.emit, "lo there");
        assert!(!b.stopped);
        assert_eq!(m.flush(), "");
    }

    #[test]
    fn held_prefix_restarts_inside_itself() {
        // "aab": after "aa" is held, "a" + "ab" must still match.
        let mut m = matcher(&["aab"]);
        let (out, stopped) = run(&mut m, &["xa", "a", "a", "b", "y"]);
        assert_eq!(out, "xa");
        assert!(stopped);
    }

    #[test]
    fn flush_returns_incomplete_prefix() {
        let mut m = matcher(&["###"]);
        let o = m.push("result: ##");
        assert_eq!(o.emit, "result: ");
        assert!(!o.stopped);
        assert_eq!(m.flush(), "##");
        assert_eq!(m.flush(), "");
    }

    #[test]
    fn earliest_match_wins() {
        let mut m = matcher(&["world", "o w"]);
        let o = m.push("hello world");
        assert_eq!(o.emit, "hell");
        assert!(o.stopped);

        let mut m = matcher(&["b", "abc"]);
        let o = m.push("xxabc");
        assert_eq!(o.emit, "xx");
        assert!(o.stopped);
    }

    #[test]
    fn earliest_match_wins_across_chunks() {
        // "bcde" would start earlier, but only complete matches count: "cd"
        // completes first and stops before "bcde" could.
        let mut m = matcher(&["bcde", "cd"]);
        let (out, stopped) = run(&mut m, &["ab", "cd", "e"]);
        assert_eq!(out, "ab");
        assert!(stopped);

        let mut m = matcher(&["bc", "abcd"]);
        let (out, stopped) = run(&mut m, &["xa", "bcd"]);
        assert_eq!(out, "x");
        assert!(stopped);
    }

    #[test]
    fn multibyte_text_around_stop() {
        let mut m = matcher(&["→終"]);
        let a = m.push("日本語→");
        assert_eq!(a.emit, "日本語");
        assert!(!a.stopped);
        let b = m.push("終わり");
        assert_eq!(b.emit, "");
        assert!(b.stopped);

        let mut m = matcher(&["éé"]);
        let (out, stopped) = run(&mut m, &["café", " crème", "éé"]);
        assert_eq!(out, "café crème");
        assert!(stopped);
    }

    #[test]
    fn multibyte_held_prefix_released_whole() {
        let mut m = matcher(&["🙂!"]);
        let a = m.push("ok 🙂");
        assert_eq!(a.emit, "ok ");
        let b = m.push("?");
        assert_eq!(b.emit, "🙂?");
        assert!(!b.stopped);
    }

    #[test]
    fn never_emits_after_stop() {
        let mut m = matcher(&["\n\n"]);
        let (out, stopped) = run(&mut m, &["line\n", "\nmore", " text", "\n"]);
        assert_eq!(out, "line");
        assert!(stopped);
        let o = m.push("again");
        assert_eq!(o.emit, "");
        assert!(o.stopped);
    }

    #[test]
    fn concatenation_is_preserved_without_match() {
        let mut m = matcher(&["xyz", "xy!"]);
        let chunks = ["ax", "y", "", "x", "xyq", "x"];
        let (out, stopped) = run(&mut m, &chunks);
        assert_eq!(out, chunks.concat());
        assert!(!stopped);
    }
}
