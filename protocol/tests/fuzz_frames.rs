//! Property-based fuzzing (proptest: cargo-fuzz needs a nightly compiler
//! this machine does not have) of everything that decodes bytes from the
//! network: frame headers and the bincode payloads of every message type
//! a peer can send. Arbitrary input must give an error, never a panic, a
//! hang or an allocation beyond the frame cap. A bounded number of cases
//! per property keeps the run short enough for CI.

use proptest::prelude::*;
use protocol::frame::{decode_frame, encode_frame};
use protocol::{Hello, InferenceRequest, NodeRequest, NodeResponse, NodeStreamRequest};

const CAP: usize = 1 << 20;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 2000,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic_any_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _ = decode_frame::<Hello>(&bytes, CAP);
        let _ = decode_frame::<NodeRequest>(&bytes, CAP);
        let _ = decode_frame::<NodeResponse>(&bytes, CAP);
        let _ = decode_frame::<NodeStreamRequest>(&bytes, CAP);
        let _ = decode_frame::<InferenceRequest>(&bytes, CAP);
        let _ = decode_frame::<protocol::generate::GenerateEvent>(&bytes, CAP);
    }

    /// A valid header followed by garbage: the payload decoders see
    /// arbitrary bytes of the declared length.
    #[test]
    fn garbage_payloads_behind_valid_headers_never_panic(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&body);
        let mut le = (body.len() as u32).to_le_bytes().to_vec();
        le.extend_from_slice(&body);
        for b in [&bytes, &le] {
            let _ = decode_frame::<NodeRequest>(b, CAP);
            let _ = decode_frame::<InferenceRequest>(b, CAP);
            let _ = decode_frame::<NodeStreamRequest>(b, CAP);
        }
    }

    /// Truncating or flipping a byte of a valid frame is an error or
    /// another valid message, never a panic.
    #[test]
    fn mutated_frames_never_panic(cut in 0usize..64, flip in 0usize..64, bit in 0u8..8) {
        let frame = encode_frame(&Hello::ours(), CAP).unwrap();
        let cut = cut.min(frame.len());
        let _ = decode_frame::<Hello>(&frame[..cut], CAP);
        let mut flipped = frame.clone();
        let i = flip % flipped.len();
        flipped[i] ^= 1 << bit;
        let _ = decode_frame::<Hello>(&flipped, CAP);
    }
}

#[test]
fn a_declared_length_over_the_cap_is_refused_before_reading() {
    let mut bytes = u32::MAX.to_be_bytes().to_vec();
    bytes.extend_from_slice(&[0; 16]);
    assert!(decode_frame::<NodeRequest>(&bytes, CAP).is_err());
    let mut le = u32::MAX.to_le_bytes().to_vec();
    le.extend_from_slice(&[0; 16]);
    assert!(decode_frame::<NodeRequest>(&le, CAP).is_err());
}
