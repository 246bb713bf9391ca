//! A linearizability checker for histories of a key-value register map.
//!
//! The algorithm is Wing and Gong's search for a linearization, with Lowe's
//! memoization: a configuration (set of already linearized operations, model
//! state) that was explored once and failed is never explored again.
//!
//! Histories are checked one key at a time (P-compositionality: a history of
//! independent registers is linearizable iff each register's projection is).
//! A read of the whole map is projected onto each key as the read of that
//! key's value (`None` when the key is absent), so histories with thousands of
//! operations stay fast.
//!
//! # What the caller records
//!
//! * Every operation with its invocation time `call` and response time `ret`
//!   on one monotone clock shared by all clients (e.g. nanoseconds since a
//!   common `Instant`).
//! * `ret: None` for an operation whose outcome is unknown (a timeout, a
//!   transport error, an ambiguous 503): such a write may or may not have
//!   taken effect, at any time after its invocation. Reads with an unknown
//!   outcome have no observable result and are ignored.
//! * Writes that *definitely* failed (a 4xx answer, or an error that proves
//!   nothing was proposed) must be left out of the history: including them
//!   as acknowledged would be wrong, and including them as unknown is merely
//!   weaker.
//! * Deletes are not modelled; every key starts absent and writes set a value.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// What a client asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// Set `key` to `value`.
    Write {
        /// The register's name.
        key: String,
        /// The value written.
        value: String,
    },
    /// Read the whole map.
    Read,
}

/// What the client was answered (ignored when `ret` is `None`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// The write was acknowledged.
    WriteOk,
    /// The map as read.
    Read(BTreeMap<String, String>),
}

/// One client operation of a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// The client (thread) that issued it; informational only.
    pub client: u64,
    /// Invocation time on the shared monotone clock.
    pub call: u64,
    /// Response time, or `None` when the outcome is unknown (the operation
    /// may or may not have taken effect, as if it returned at +infinity).
    pub ret: Option<u64>,
    /// The request.
    pub input: Input,
    /// The response (meaningless when `ret` is `None`).
    pub output: Output,
}

/// The verdict on a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckResult {
    /// Whether every key's projection of the history is linearizable.
    pub linearizable: bool,
    /// The first key (in key order) whose projection is not linearizable.
    pub failing_key: Option<String>,
    /// A human-readable reason for a failure (empty on success).
    pub reason: String,
    /// How many keys were checked.
    pub keys_checked: usize,
    /// How many search configurations were explored, over all keys.
    pub configurations_explored: u64,
}

/// Checks whether `history` is linearizable with respect to a map of
/// independent read/write registers that all start absent.
///
/// Operations with `input` and `output` that do not match (a read answered
/// `WriteOk`, a write answered with a map) make the history non-linearizable.
pub fn check(history: &[Operation]) -> CheckResult {
    let mut result = CheckResult {
        linearizable: true,
        failing_key: None,
        reason: String::new(),
        keys_checked: 0,
        configurations_explored: 0,
    };
    // Every key that is written or read.
    let mut keys: BTreeSet<&str> = BTreeSet::new();
    for op in history {
        match (&op.input, &op.output) {
            (Input::Write { key, .. }, _) => {
                keys.insert(key);
            }
            (Input::Read, Output::Read(map)) if op.ret.is_some() => {
                keys.extend(map.keys().map(String::as_str));
            }
            (Input::Read, Output::WriteOk) if op.ret.is_some() => {
                result.linearizable = false;
                result.reason = format!("read answered as a write: {op:?}");
                return result;
            }
            _ => {}
        }
        if let Some(ret) = op.ret {
            if ret < op.call {
                result.linearizable = false;
                result.reason = format!("operation returns before it is called: {op:?}");
                return result;
            }
        }
    }
    for key in keys {
        result.keys_checked += 1;
        let ops = project(history, key);
        let (ok, explored) = check_register(&ops);
        result.configurations_explored += explored;
        if !ok {
            result.linearizable = false;
            result.failing_key = Some(key.to_string());
            result.reason = format!(
                "no linearization of the {} operations on key {key:?}",
                ops.len()
            );
            return result;
        }
    }
    result
}

/// An operation on a single register, values interned to small integers.
#[derive(Clone, Copy, Debug)]
struct RegOp {
    call: u64,
    /// `u64::MAX` for an unknown outcome.
    ret: u64,
    kind: RegKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RegKind {
    Write(u32),
    /// The value read (`None`: absent).
    Read(Option<u32>),
}

/// Projects the history onto one key. Reads with unknown outcome are
/// dropped (they have no effect), as are unknown writes whose value no read
/// ever saw (they can always be taken as never having happened).
fn project(history: &[Operation], key: &str) -> Vec<RegOp> {
    let mut ids: HashMap<&str, u32> = HashMap::new();
    let mut ops = Vec::new();
    let mut seen: HashSet<u32> = HashSet::new();
    for op in history {
        match (&op.input, &op.output) {
            (Input::Write { key: k, value }, _) if k == key => {
                let v = intern(&mut ids, value);
                ops.push(RegOp {
                    call: op.call,
                    ret: op.ret.unwrap_or(u64::MAX),
                    kind: RegKind::Write(v),
                });
            }
            (Input::Read, Output::Read(map)) => {
                let Some(ret) = op.ret else { continue };
                let v = map.get(key).map(|v| intern(&mut ids, v));
                if let Some(v) = v {
                    seen.insert(v);
                }
                ops.push(RegOp {
                    call: op.call,
                    ret,
                    kind: RegKind::Read(v),
                });
            }
            _ => {}
        }
    }
    ops.retain(|o| match o.kind {
        RegKind::Write(v) => o.ret != u64::MAX || seen.contains(&v),
        RegKind::Read(_) => true,
    });
    // Reads of an absent key that return before any write to it is called
    // can all be linearized first, in any order: leave them out.
    let first_write = ops
        .iter()
        .filter(|o| matches!(o.kind, RegKind::Write(_)))
        .map(|o| o.call)
        .min()
        .unwrap_or(u64::MAX);
    ops.retain(|o| !(o.kind == RegKind::Read(None) && o.ret < first_write));
    // Call order; among equal calls, earlier returns first.
    ops.sort_by_key(|o| (o.call, o.ret));
    ops
}

/// The small integer standing for `value` in one key's projection.
fn intern<'a>(ids: &mut HashMap<&'a str, u32>, value: &'a str) -> u32 {
    let next = ids.len() as u32;
    *ids.entry(value).or_insert(next)
}

/// A fixed-size bitset over operation indices.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Self {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn get(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// A memoized configuration: the linearized set (with an incrementally
/// maintained hash of it, so that hashing does not walk the bitset) and
/// the register's value.
#[derive(Clone, Debug)]
struct Config {
    hash: u64,
    done: Bits,
    state: Option<u32>,
}

impl PartialEq for Config {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.state == other.state && self.done == other.done
    }
}

impl Eq for Config {}

impl std::hash::Hash for Config {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.hash.hash(h);
        self.state.hash(h);
    }
}

/// A pseudo-random 64-bit tag of operation `i` (splitmix64), XORed into
/// the hash of every linearized set that contains it.
fn tag(i: usize) -> u64 {
    let mut z = (i as u64)
        .wrapping_add(1)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The operations that may be linearized next: those not yet linearized
/// that were invoked before every other pending operation returned.
/// Acknowledged operations come first (earliest return first), unknown
/// writes last, which finds a linearization of a correct history quickly.
fn candidates(ops: &[RegOp], done: &Bits, first_pending: usize) -> Vec<usize> {
    let mut min_ret = u64::MAX;
    let mut out = Vec::new();
    for (i, op) in ops.iter().enumerate().skip(first_pending) {
        if op.call > min_ret {
            break;
        }
        if done.get(i) {
            continue;
        }
        min_ret = min_ret.min(op.ret);
        out.push(i);
    }
    out.retain(|&i| ops[i].call <= min_ret);
    out.sort_by_key(|&i| ops[i].ret);
    out
}

/// One level of the depth-first search.
struct Frame {
    candidates: Vec<usize>,
    next: usize,
    /// The operation linearized at this level and the state before it.
    chosen: Option<(usize, Option<u32>)>,
}

/// Wing–Gong search with Lowe's memoization on one register. Returns
/// whether a linearization exists and how many configurations were explored.
fn check_register(ops: &[RegOp]) -> (bool, u64) {
    let required = ops.iter().filter(|o| o.ret != u64::MAX).count();
    let mut remaining = required;
    let mut done = Bits::new(ops.len());
    let mut state: Option<u32> = None;
    let mut first_pending = 0usize;
    let mut hash = 0u64;
    let mut memo: HashSet<Config> = HashSet::new();
    let mut explored = 0u64;
    let mut stack = vec![Frame {
        candidates: candidates(ops, &done, first_pending),
        next: 0,
        chosen: None,
    }];
    loop {
        if remaining == 0 {
            return (true, explored);
        }
        let Some(frame) = stack.last_mut() else {
            return (false, explored);
        };
        if frame.next >= frame.candidates.len() {
            // Exhausted: undo the choice that led here.
            stack.pop();
            if let Some(parent) = stack.last_mut() {
                if let Some((i, prev)) = parent.chosen.take() {
                    done.clear(i);
                    hash ^= tag(i);
                    state = prev;
                    first_pending = first_pending.min(i);
                    if ops[i].ret != u64::MAX {
                        remaining += 1;
                    }
                }
            }
            continue;
        }
        let i = frame.candidates[frame.next];
        frame.next += 1;
        let new_state = match ops[i].kind {
            RegKind::Write(v) => Some(v),
            RegKind::Read(v) if v == state => state,
            RegKind::Read(_) => continue,
        };
        done.set(i);
        explored += 1;
        let config = Config {
            hash: hash ^ tag(i),
            done: done.clone(),
            state: new_state,
        };
        if !memo.insert(config) {
            done.clear(i);
            continue;
        }
        hash ^= tag(i);
        frame.chosen = Some((i, state));
        state = new_state;
        if ops[i].ret != u64::MAX {
            remaining -= 1;
        }
        while first_pending < ops.len() && done.get(first_pending) {
            first_pending += 1;
        }
        stack.push(Frame {
            candidates: candidates(ops, &done, first_pending),
            next: 0,
            chosen: None,
        });
    }
}

#[cfg(test)]
mod tests;
