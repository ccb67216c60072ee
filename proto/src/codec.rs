//! Framing and encoding: each frame is a 4-byte big-endian length and a MessagePack body (structs as
//! maps, so fields can be added without breaking older peers; the compact event batches of 1.5 as
//! arrays, see [`crate::flow_batch`]). Frames above [`MAX_FRAME_BYTES`] are refused by both sides.

use bytes::Bytes;
use serde::{Serialize, de::DeserializeOwned};
use tokio_util::codec::LengthDelimitedCodec;

/// Largest frame either side accepts. Event batches are cut well below it.
pub const MAX_FRAME_BYTES: usize = 4 << 20;

/// Deepest nesting of arrays and maps a message may have. The deepest real message (a subscription's
/// label selectors) nests about 8 levels; MessagePack decoding would otherwise allow 1024, and each
/// level is a few stack frames of recursion: a 0.7 KB frame nested 700 deep overflowed a worker
/// thread's stack in a debug build. Too deep is a decode error, for that one peer.
pub const MAX_DEPTH: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("encoding a {what} message")]
    Encode {
        what: &'static str,
        #[source]
        source: rmp_serde::encode::Error,
    },
    #[error("decoding a {what} message ({len} bytes)")]
    Decode {
        what: &'static str,
        len: usize,
        #[source]
        source: rmp_serde::decode::Error,
    },
}

/// The length-delimited framing both sides use.
pub fn framing() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder().length_field_length(4).max_frame_length(MAX_FRAME_BYTES).new_codec()
}

/// Encodes a message body (without the length prefix).
pub fn encode<T: Serialize>(what: &'static str, message: &T) -> Result<Bytes, CodecError> {
    rmp_serde::to_vec_named(message).map(Bytes::from).map_err(|source| CodecError::Encode { what, source })
}

/// Encodes a message body with structs as arrays (no field names): only for messages whose structs are
/// positional by contract, the [`crate::flow_batch::FlowBatch`] of 1.5. [`decode`] reads both forms.
pub fn encode_compact<T: Serialize>(what: &'static str, message: &T) -> Result<Bytes, CodecError> {
    rmp_serde::to_vec(message).map(Bytes::from).map_err(|source| CodecError::Encode { what, source })
}

/// Decodes a message body, nested at most [`MAX_DEPTH`] deep.
pub fn decode<T: DeserializeOwned>(what: &'static str, frame: &[u8]) -> Result<T, CodecError> {
    let mut de = rmp_serde::Deserializer::from_read_ref(frame);
    de.set_max_depth(MAX_DEPTH);
    T::deserialize(&mut de).map_err(|source| CodecError::Decode { what, len: frame.len(), source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::ClientMessage;

    /// `n` nested one-element arrays around a nil.
    fn nested(n: usize) -> Vec<u8> {
        let mut out = vec![0x91; n];
        out.push(0xc0);
        out
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        for depth in [MAX_DEPTH + 1, 700, 100_000] {
            let body = nested(depth);
            let err = decode::<ClientMessage>("client", &body).unwrap_err();
            assert!(err.to_string().contains("decoding a client message"), "{err}");
            // Also where a value of any shape is accepted.
            assert!(decode::<serde_json::Value>("client", &body).is_err(), "{depth} levels");
        }
        assert!(decode::<serde_json::Value>("client", &nested(MAX_DEPTH - 1)).is_ok());
    }
}
