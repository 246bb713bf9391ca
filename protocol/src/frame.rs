//! Length-prefixed frames: a little-endian `u32` payload length followed by
//! the payload, a bincode 2 encoding of any serde type.
//!
//! The pure functions ([`encode_frame`], [`decode_header`], [`decode_payload`],
//! [`decode_frame`]) do no I/O and are what the async helpers
//! ([`write_frame`], [`read_frame`]) are built on. Every frame is checked
//! against a size cap before anything is allocated for it, and every async
//! call is bounded by a timeout.

use std::time::Duration;

use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest payload any frame may carry: 16 MiB. Per-call caps may be
/// smaller, never larger.
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// Size of the length prefix in bytes.
pub const HEADER_BYTES: usize = 4;

/// How much of a payload is allocated up front; the rest grows as bytes
/// actually arrive, so a peer announcing a large frame and sending nothing
/// cannot make us allocate the whole announced size.
const INITIAL_READ_CAPACITY: usize = 64 * 1024;

/// The bincode configuration of every payload: varint integers, and a limit
/// on what decoding may allocate.
fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME_BYTES>()
}

/// Why a frame could not be encoded, decoded, read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The payload is longer than the cap.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Payload length, announced or actual.
        len: usize,
        /// The cap in force.
        max: usize,
    },
    /// The input ended in the middle of a frame.
    #[error("truncated frame: expected {expected} bytes, got {got}")]
    Truncated {
        /// Bytes the frame needs (header or payload).
        expected: usize,
        /// Bytes that were available.
        got: usize,
    },
    /// The stream ended cleanly before the first byte of a frame.
    #[error("stream closed before a frame")]
    Closed,
    /// The message could not be serialized.
    #[error("cannot encode frame: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    /// The payload is not a valid encoding of the expected type.
    #[error("cannot decode frame: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    /// The payload decoded but bytes were left over.
    #[error("{extra} unexpected bytes after the message in a frame")]
    TrailingBytes {
        /// How many bytes were left.
        extra: usize,
    },
    /// The read or write did not finish in time.
    #[error("frame I/O timed out after {0:?}")]
    Timeout(Duration),
    /// The underlying stream failed.
    #[error("frame I/O failed: {0}")]
    Io(#[from] std::io::Error),
}

/// The effective cap: the caller's, never above [`MAX_FRAME_BYTES`].
fn effective_cap(max_len: usize) -> usize {
    max_len.min(MAX_FRAME_BYTES)
}

/// Serializes `msg` to a bare payload (no length prefix).
pub fn encode_payload<T: Serialize + ?Sized>(msg: &T) -> Result<Vec<u8>, FrameError> {
    Ok(bincode::serde::encode_to_vec(msg, bincode_config())?)
}

/// Serializes `msg` to a complete frame (length prefix and payload),
/// refusing payloads longer than `max_len` (itself capped at [`MAX_FRAME_BYTES`]).
pub fn encode_frame<T: Serialize + ?Sized>(msg: &T, max_len: usize) -> Result<Vec<u8>, FrameError> {
    let payload = encode_payload(msg)?;
    let max = effective_cap(max_len);
    if payload.len() > max {
        return Err(FrameError::TooLarge {
            len: payload.len(),
            max,
        });
    }
    let len = u32::try_from(payload.len()).map_err(|_| FrameError::TooLarge {
        len: payload.len(),
        max,
    })?;
    let mut out = Vec::with_capacity(HEADER_BYTES + payload.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Reads the payload length from a frame header, refusing lengths above
/// `max_len` (itself capped at [`MAX_FRAME_BYTES`]).
pub fn decode_header(header: [u8; HEADER_BYTES], max_len: usize) -> Result<usize, FrameError> {
    let len = u32::from_le_bytes(header) as usize;
    let max = effective_cap(max_len);
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(len)
}

/// Deserializes a bare payload; the whole payload must be one message.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    let (msg, used) = bincode::serde::decode_from_slice(payload, bincode_config())?;
    if used != payload.len() {
        return Err(FrameError::TrailingBytes {
            extra: payload.len() - used,
        });
    }
    Ok(msg)
}

/// Decodes the first frame in `buf`, returning the message and the number of
/// bytes the frame took (header included).
pub fn decode_frame<T: DeserializeOwned>(
    buf: &[u8],
    max_len: usize,
) -> Result<(T, usize), FrameError> {
    let header: [u8; HEADER_BYTES] = match buf.get(..HEADER_BYTES) {
        Some(h) => [h[0], h[1], h[2], h[3]],
        None => {
            return Err(FrameError::Truncated {
                expected: HEADER_BYTES,
                got: buf.len(),
            })
        }
    };
    let len = decode_header(header, max_len)?;
    let body = &buf[HEADER_BYTES..];
    let payload = body.get(..len).ok_or(FrameError::Truncated {
        expected: len,
        got: body.len(),
    })?;
    Ok((decode_payload(payload)?, HEADER_BYTES + len))
}

/// Writes one frame carrying `msg` and flushes, within `timeout`.
pub async fn write_frame<W, T>(
    writer: &mut W,
    msg: &T,
    max_len: usize,
    timeout: Duration,
) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin + ?Sized,
    T: Serialize + ?Sized,
{
    let frame = encode_frame(msg, max_len)?;
    tokio::time::timeout(timeout, async {
        writer.write_all(&frame).await?;
        writer.flush().await
    })
    .await
    .map_err(|_| FrameError::Timeout(timeout))??;
    Ok(())
}

/// Reads one frame and decodes it, within `timeout`.
///
/// A stream that ends before the first header byte gives
/// [`FrameError::Closed`]; one that ends inside a frame gives
/// [`FrameError::Truncated`]. A header announcing more than `max_len` bytes
/// is refused before any payload is read or allocated.
pub async fn read_frame<R, T>(
    reader: &mut R,
    max_len: usize,
    timeout: Duration,
) -> Result<T, FrameError>
where
    R: AsyncRead + Unpin + ?Sized,
    T: DeserializeOwned,
{
    let payload = tokio::time::timeout(timeout, read_frame_bytes(reader, max_len))
        .await
        .map_err(|_| FrameError::Timeout(timeout))??;
    decode_payload(&payload)
}

/// Reads the raw payload of one frame, without a timeout.
async fn read_frame_bytes<R>(reader: &mut R, max_len: usize) -> Result<Vec<u8>, FrameError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    let mut header = [0u8; HEADER_BYTES];
    let mut got = 0;
    while got < HEADER_BYTES {
        let n = reader.read(&mut header[got..]).await?;
        if n == 0 {
            return Err(if got == 0 {
                FrameError::Closed
            } else {
                FrameError::Truncated {
                    expected: HEADER_BYTES,
                    got,
                }
            });
        }
        got += n;
    }
    let len = decode_header(header, max_len)?;
    let mut payload = Vec::with_capacity(len.min(INITIAL_READ_CAPACITY));
    let mut limited = reader.take(len as u64);
    limited.read_to_end(&mut payload).await?;
    if payload.len() < len {
        return Err(FrameError::Truncated {
            expected: len,
            got: payload.len(),
        });
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Msg {
        id: u64,
        text: String,
        data: Vec<u8>,
    }

    fn msg() -> Msg {
        Msg {
            id: 42,
            text: "hello".into(),
            data: vec![1, 2, 3],
        }
    }

    const T: Duration = Duration::from_secs(5);

    #[test]
    fn pure_round_trip() {
        let frame = encode_frame(&msg(), MAX_FRAME_BYTES).unwrap();
        let len = u32::from_le_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(len + HEADER_BYTES, frame.len());
        let (back, used): (Msg, usize) = decode_frame(&frame, MAX_FRAME_BYTES).unwrap();
        assert_eq!(back, msg());
        assert_eq!(used, frame.len());
    }

    #[test]
    fn oversized_refused_on_encode() {
        let big = Msg {
            data: vec![0; 1000],
            ..msg()
        };
        match encode_frame(&big, 100) {
            Err(FrameError::TooLarge { max: 100, len }) => assert!(len > 1000),
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[test]
    fn per_call_cap_never_exceeds_global_cap() {
        let header = ((MAX_FRAME_BYTES + 1) as u32).to_le_bytes();
        assert!(matches!(
            decode_header(header, usize::MAX),
            Err(FrameError::TooLarge {
                max: MAX_FRAME_BYTES,
                ..
            })
        ));
    }

    #[test]
    fn oversized_refused_on_decode() {
        // A header claiming 4 GiB - 1 bytes, with no payload behind it.
        let buf = u32::MAX.to_le_bytes();
        assert!(matches!(
            decode_frame::<Msg>(&buf, MAX_FRAME_BYTES),
            Err(FrameError::TooLarge { len, .. }) if len == u32::MAX as usize
        ));
    }

    #[test]
    fn truncated_frames_refused() {
        let frame = encode_frame(&msg(), MAX_FRAME_BYTES).unwrap();
        assert!(matches!(
            decode_frame::<Msg>(&frame[..2], MAX_FRAME_BYTES),
            Err(FrameError::Truncated {
                expected: 4,
                got: 2
            })
        ));
        assert!(matches!(
            decode_frame::<Msg>(&frame[..frame.len() - 1], MAX_FRAME_BYTES),
            Err(FrameError::Truncated { .. })
        ));
    }

    #[test]
    fn garbage_payload_refused() {
        // A string length far beyond the payload.
        let mut garbage = vec![0xffu8; 12];
        let mut frame = (garbage.len() as u32).to_le_bytes().to_vec();
        frame.append(&mut garbage);
        assert!(matches!(
            decode_frame::<Msg>(&frame, MAX_FRAME_BYTES),
            Err(FrameError::Decode(_))
        ));
        // Valid message followed by junk inside the same payload.
        let mut payload = encode_payload(&msg()).unwrap();
        payload.push(7);
        assert!(matches!(
            decode_payload::<Msg>(&payload),
            Err(FrameError::TrailingBytes { extra: 1 })
        ));
    }

    #[test]
    fn hostile_inner_length_does_not_allocate() {
        // A payload whose string length prefix (varint marker 253: a u64
        // follows) claims u64::MAX bytes.
        let payload = [42u8, 253, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert!(decode_payload::<Msg>(&payload).is_err());
    }

    #[tokio::test]
    async fn async_round_trip() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let w = tokio::spawn(async move {
            write_frame(&mut a, &msg(), MAX_FRAME_BYTES, T)
                .await
                .unwrap();
            write_frame(&mut a, &msg(), MAX_FRAME_BYTES, T)
                .await
                .unwrap();
        });
        let m1: Msg = read_frame(&mut b, MAX_FRAME_BYTES, T).await.unwrap();
        let m2: Msg = read_frame(&mut b, MAX_FRAME_BYTES, T).await.unwrap();
        assert_eq!(m1, msg());
        assert_eq!(m2, msg());
        w.await.unwrap();
        assert!(matches!(
            read_frame::<_, Msg>(&mut b, MAX_FRAME_BYTES, T).await,
            Err(FrameError::Closed)
        ));
    }

    #[tokio::test]
    async fn async_oversized_header_refused() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
        assert!(matches!(
            read_frame::<_, Msg>(&mut b, 1024, T).await,
            Err(FrameError::TooLarge { max: 1024, .. })
        ));
    }

    #[tokio::test]
    async fn async_truncated_refused() {
        let frame = encode_frame(&msg(), MAX_FRAME_BYTES).unwrap();
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&frame[..frame.len() - 2]).await.unwrap();
        drop(a);
        assert!(matches!(
            read_frame::<_, Msg>(&mut b, MAX_FRAME_BYTES, T).await,
            Err(FrameError::Truncated { .. })
        ));
    }

    #[tokio::test]
    async fn async_read_times_out() {
        let (_a, mut b) = tokio::io::duplex(64);
        let r = read_frame::<_, Msg>(&mut b, MAX_FRAME_BYTES, Duration::from_millis(50)).await;
        assert!(matches!(r, Err(FrameError::Timeout(_))));
    }
}
