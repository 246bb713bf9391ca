use std::collections::BTreeMap;

use super::*;

fn w(client: u64, call: u64, ret: Option<u64>, key: &str, value: &str) -> Operation {
    Operation {
        client,
        call,
        ret,
        input: Input::Write {
            key: key.into(),
            value: value.into(),
        },
        output: Output::WriteOk,
    }
}

fn r(client: u64, call: u64, ret: u64, seen: &[(&str, &str)]) -> Operation {
    Operation {
        client,
        call,
        ret: Some(ret),
        input: Input::Read,
        output: Output::Read(
            seen.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
    }
}

#[test]
fn empty_history_is_linearizable() {
    let res = check(&[]);
    assert!(res.linearizable);
    assert_eq!(res.keys_checked, 0);
}

#[test]
fn sequential_write_then_read_is_linearizable() {
    let h = [
        w(1, 0, Some(10), "x", "1"),
        r(2, 20, 30, &[("x", "1")]),
        w(1, 40, Some(50), "x", "2"),
        r(2, 60, 70, &[("x", "2")]),
    ];
    assert!(check(&h).linearizable);
}

#[test]
fn stale_read_after_completed_write_fails() {
    let h = [
        w(1, 0, Some(10), "x", "1"),
        w(1, 20, Some(30), "x", "2"),
        r(2, 40, 50, &[("x", "1")]),
    ];
    let res = check(&h);
    assert!(!res.linearizable);
    assert_eq!(res.failing_key.as_deref(), Some("x"));
}

#[test]
fn read_of_absent_key_after_completed_write_fails() {
    let h = [w(1, 0, Some(10), "x", "1"), r(2, 20, 30, &[])];
    assert!(!check(&h).linearizable);
}

#[test]
fn read_of_value_never_written_fails() {
    let h = [w(1, 0, Some(10), "x", "1"), r(2, 5, 30, &[("x", "9")])];
    assert!(!check(&h).linearizable);
}

#[test]
fn new_then_old_sequential_reads_fail() {
    // The write overlaps both reads, but once a read saw the new value a
    // later read may not see the old one.
    let h = [
        w(1, 0, Some(10), "x", "1"),
        w(1, 20, Some(100), "x", "2"),
        r(2, 30, 40, &[("x", "2")]),
        r(3, 50, 60, &[("x", "1")]),
    ];
    assert!(!check(&h).linearizable);
}

#[test]
fn concurrent_write_and_read_ok_in_either_order() {
    let before = [
        w(1, 0, Some(10), "x", "1"),
        w(1, 20, Some(50), "x", "2"),
        r(2, 25, 45, &[("x", "1")]),
    ];
    let after = [
        w(1, 0, Some(10), "x", "1"),
        w(1, 20, Some(50), "x", "2"),
        r(2, 25, 45, &[("x", "2")]),
    ];
    assert!(check(&before).linearizable);
    assert!(check(&after).linearizable);
}

#[test]
fn unknown_write_that_shows_up_later_is_ok() {
    let h = [
        w(1, 0, None, "x", "1"),
        r(2, 100, 110, &[]),
        r(2, 200, 210, &[("x", "1")]),
        r(3, 300, 310, &[("x", "1")]),
    ];
    assert!(check(&h).linearizable);
}

#[test]
fn unknown_write_that_never_shows_up_is_ok() {
    let h = [
        w(1, 0, Some(5), "x", "0"),
        w(1, 10, None, "x", "1"),
        r(2, 100, 110, &[("x", "0")]),
        r(2, 200, 210, &[("x", "0")]),
    ];
    assert!(check(&h).linearizable);
}

#[test]
fn unknown_write_seen_then_unseen_fails() {
    let h = [
        w(1, 0, None, "x", "1"),
        r(2, 100, 110, &[("x", "1")]),
        r(2, 200, 210, &[]),
    ];
    assert!(!check(&h).linearizable);
}

#[test]
fn lost_acknowledged_write_fails() {
    let h = [
        w(1, 0, Some(10), "a", "1"),
        w(1, 20, Some(30), "b", "1"),
        r(2, 40, 50, &[("a", "1")]),
    ];
    let res = check(&h);
    assert!(!res.linearizable);
    assert_eq!(res.failing_key.as_deref(), Some("b"));
}

#[test]
fn keys_are_independent() {
    let h = [
        w(1, 0, Some(10), "a", "1"),
        w(2, 0, Some(10), "b", "1"),
        r(3, 5, 8, &[("b", "1")]),
        r(3, 20, 30, &[("a", "1"), ("b", "1")]),
    ];
    let res = check(&h);
    assert!(res.linearizable, "{res:?}");
    assert_eq!(res.keys_checked, 2);
}

#[test]
fn malformed_operations_fail() {
    let mut backwards = w(1, 10, Some(5), "x", "1");
    assert!(!check(std::slice::from_ref(&backwards)).linearizable);
    backwards.ret = Some(10);
    assert!(check(&[backwards]).linearizable);
    let read_as_write = Operation {
        client: 1,
        call: 0,
        ret: Some(1),
        input: Input::Read,
        output: Output::WriteOk,
    };
    assert!(!check(&[read_as_write]).linearizable);
}

/// xorshift64*: enough randomness for tests, no dependencies.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A history produced by a real (atomic) register map: each operation takes
/// effect at a linearization point, and its call and return are jittered
/// around that point. Some writes lose their answer (unknown outcome).
fn random_history(rng: &mut XorShift, ops: usize, keys: u64) -> Vec<Operation> {
    let mut state: BTreeMap<String, String> = BTreeMap::new();
    let mut history = Vec::with_capacity(ops);
    for n in 0..ops {
        let point = n as u64 * 100 + 50;
        let call = point - rng.below(150).min(point);
        let ret = point + rng.below(150);
        let client = rng.below(4);
        if rng.below(2) == 0 {
            let key = format!("k{}", rng.below(keys));
            let value = format!("v{n}");
            state.insert(key.clone(), value.clone());
            let unknown = rng.below(10) == 0;
            history.push(w(client, call, (!unknown).then_some(ret), &key, &value));
        } else {
            history.push(Operation {
                client,
                call,
                ret: Some(ret),
                input: Input::Read,
                output: Output::Read(state.clone()),
            });
        }
    }
    history
}

#[test]
fn random_register_histories_are_linearizable_and_stale_mutations_are_not() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut mutated_checked = 0;
    for round in 0..200 {
        let history = random_history(&mut rng, 60 + round % 40, 1 + (round % 4) as u64);
        let res = check(&history);
        assert!(res.linearizable, "round {round}: {res:?}\n{history:#?}");

        // Make one late read see a value that was overwritten long before
        // (by writes that completed before the read was called).
        let Some((idx, key, stale)) = stale_candidate(&history) else {
            continue;
        };
        let mut bad = history.clone();
        if let Output::Read(map) = &mut bad[idx].output {
            map.insert(key.clone(), stale);
        }
        let res = check(&bad);
        assert!(!res.linearizable, "round {round}: mutation at {idx} passed");
        assert_eq!(res.failing_key.as_deref(), Some(key.as_str()));
        mutated_checked += 1;
    }
    assert!(
        mutated_checked > 50,
        "only {mutated_checked} mutations made"
    );
}

/// A read and a key such that two acknowledged writes to the key both
/// completed before the read was called, the earlier one's value being
/// certainly overwritten: reading it is stale.
fn stale_candidate(history: &[Operation]) -> Option<(usize, String, String)> {
    for (idx, op) in history.iter().enumerate().rev() {
        if !matches!(op.input, Input::Read) {
            continue;
        }
        // Acknowledged writes that returned before this read was called,
        // in return order; the first one's value is stale if a later write
        // was called after it returned.
        let mut done: Vec<(&Operation, &str, &str)> = history
            .iter()
            .filter_map(|o| match (&o.input, o.ret) {
                (Input::Write { key, value }, Some(ret)) if ret < op.call => {
                    Some((o, key.as_str(), value.as_str()))
                }
                _ => None,
            })
            .collect();
        done.sort_by_key(|(o, _, _)| o.ret);
        for (i, (a, key, value)) in done.iter().enumerate() {
            let overwritten = done[i + 1..]
                .iter()
                .any(|(b, k, _)| k == key && Some(b.call) > a.ret);
            // No unknown write to the key with the same value could be the
            // source either: values are unique per write.
            if overwritten {
                return Some((idx, key.to_string(), value.to_string()));
            }
        }
    }
    None
}

#[test]
fn thousands_of_operations_check_quickly() {
    let mut rng = XorShift(42);
    let history = random_history(&mut rng, 5000, 8);
    let started = std::time::Instant::now();
    let res = check(&history);
    assert!(res.linearizable, "{res:?}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}
