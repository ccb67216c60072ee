//! Framing and encoding: each frame is a 4-byte big-endian length and a MessagePack body (structs as
//! maps, so fields can be added without breaking older peers). Frames above [`MAX_FRAME_BYTES`] are
//! refused by both sides.

use bytes::{Bytes, BytesMut};
use serde::{Serialize, de::DeserializeOwned};
use tokio_util::codec::LengthDelimitedCodec;

/// Largest frame either side accepts. Event batches are cut well below it.
pub const MAX_FRAME_BYTES: usize = 4 << 20;

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

/// Decodes a message body.
pub fn decode<T: DeserializeOwned>(what: &'static str, frame: &BytesMut) -> Result<T, CodecError> {
    rmp_serde::from_slice(frame).map_err(|source| CodecError::Decode { what, len: frame.len(), source })
}
