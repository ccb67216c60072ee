//! Frames on one client connection: a reader that refuses oversized length prefixes before buffering
//! anything of them, and a writer that encodes [`ServerMessage`]s with the shared framing.

use bytes::{Buf as _, BytesMut};
use flowgate_proto::{
    codec::{self, CodecError, MAX_FRAME_BYTES},
    flow_batch::FlowBatch,
    flow_batch_wire,
    message::ServerMessage,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::unix::{OwnedReadHalf, OwnedWriteHalf},
};
use tokio_util::codec::{Encoder as _, LengthDelimitedCodec};

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("reading from the client")]
    Read {
        #[source]
        source: std::io::Error,
    },
    #[error("writing to the client")]
    Write {
        #[source]
        source: std::io::Error,
    },
    #[error("frame of {len} bytes is over the limit of {MAX_FRAME_BYTES} bytes")]
    TooLarge { len: usize },
    #[error("the client closed the connection in the middle of a frame")]
    Truncated,
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// Bytes of the big-endian length prefix of every frame.
const PREFIX_BYTES: usize = 4;

/// Takes one whole frame's body off the front of `buf`, or leaves `buf` as it is when the frame is not
/// complete yet.
pub fn take_frame(buf: &mut BytesMut) -> Result<Option<BytesMut>, FrameError> {
    let Some(prefix) = buf.get(..PREFIX_BYTES) else { return Ok(None) };
    let len = u32::from_be_bytes(prefix.try_into().expect("four bytes")) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge { len });
    }
    if buf.len() < PREFIX_BYTES + len {
        return Ok(None);
    }
    buf.advance(PREFIX_BYTES);
    Ok(Some(buf.split_to(len)))
}

/// Reads whole frames.
pub struct FrameReader {
    half: OwnedReadHalf,
    buf: BytesMut,
}

impl FrameReader {
    pub fn new(half: OwnedReadHalf) -> Self {
        Self { half, buf: BytesMut::with_capacity(8 << 10) }
    }

    /// The next frame's body; `None` when the client closed the connection between frames.
    ///
    /// The length prefix is only peeked at until the whole body is buffered, so a frame that arrives in
    /// any number of pieces (split inside the prefix or the body) is read the same as one that arrives
    /// whole, and an oversized prefix is refused before any of its body is buffered.
    pub async fn next(&mut self) -> Result<Option<BytesMut>, FrameError> {
        loop {
            if let Some(frame) = take_frame(&mut self.buf)? {
                return Ok(Some(frame));
            }
            if self.buf.capacity() - self.buf.len() < 4 << 10 {
                self.buf.reserve(16 << 10);
            }
            if self.half.read_buf(&mut self.buf).await.map_err(|source| FrameError::Read { source })? == 0 {
                return if self.buf.is_empty() { Ok(None) } else { Err(FrameError::Truncated) };
            }
        }
    }

    /// Waits until the client closes its side (or the connection fails). Whatever the client sends
    /// meanwhile is discarded: after subscribing, it has nothing more to say. Cancel-safe.
    pub async fn closed(&mut self) {
        loop {
            self.buf.clear();
            match self.half.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }
}

/// Writes frames.
pub struct FrameWriter {
    half: OwnedWriteHalf,
    codec: LengthDelimitedCodec,
    out: BytesMut,
}

impl FrameWriter {
    pub fn new(half: OwnedWriteHalf) -> Self {
        Self { half, codec: codec::framing(), out: BytesMut::new() }
    }

    /// Encodes a message into its frame body (for callers that check the size first).
    pub fn encode(message: &ServerMessage) -> Result<bytes::Bytes, FrameError> {
        Ok(codec::encode("server", message)?)
    }

    /// Encodes a compact event batch (1.5, see `flow_batch`) as `ServerMessage::FlowBatch`'s frame body,
    /// by hand (`flow_batch_wire`): the bytes serde would write, at a fraction of the cost per flow.
    pub fn encode_batch(batch: &FlowBatch) -> Result<bytes::Bytes, FrameError> {
        // About 80 bytes a flow.
        let mut body = Vec::with_capacity(64 + 96 * batch.events.len());
        flow_batch_wire::write(batch, &mut body)?;
        Ok(body.into())
    }

    /// Sends an encoded body as one frame.
    pub async fn send_body(&mut self, body: bytes::Bytes) -> Result<(), FrameError> {
        if body.len() > MAX_FRAME_BYTES {
            return Err(FrameError::TooLarge { len: body.len() });
        }
        self.out.clear();
        self.codec.encode(body, &mut self.out).map_err(|source| FrameError::Write { source })?;
        self.half.write_all(&self.out).await.map_err(|source| FrameError::Write { source })?;
        // Keep a big batch's buffer from staying allocated for the rest of the session.
        if self.out.capacity() > 1 << 20 {
            self.out = BytesMut::new();
        }
        Ok(())
    }

    pub async fn send(&mut self, message: &ServerMessage) -> Result<(), FrameError> {
        self.send_body(Self::encode(message)?).await
    }

    /// Flushes and closes the write side, so the client reads everything sent and then the end.
    pub async fn close(mut self) {
        let _ = self.half.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut out = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn frames_split_anywhere_are_taken_whole_and_in_order() {
        let bodies: Vec<Vec<u8>> = vec![b"hello".to_vec(), vec![7; 20_000], Vec::new(), vec![1; 3]];
        let stream: Vec<u8> = bodies.iter().flat_map(|b| frame(b)).collect();
        for piece in [1, 2, 3, 5, 4096, stream.len()] {
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for chunk in stream.chunks(piece) {
                buf.extend_from_slice(chunk);
                while let Some(f) = take_frame(&mut buf).unwrap() {
                    got.push(f.to_vec());
                }
            }
            assert_eq!(got, bodies, "pieces of {piece} bytes");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn an_oversized_prefix_is_refused_before_its_body() {
        let mut buf = BytesMut::from(&((MAX_FRAME_BYTES as u32) + 1).to_be_bytes()[..]);
        assert!(matches!(take_frame(&mut buf), Err(FrameError::TooLarge { len }) if len == MAX_FRAME_BYTES + 1));
        let mut buf = BytesMut::from(&frame(&vec![0; MAX_FRAME_BYTES])[..]);
        assert_eq!(take_frame(&mut buf).unwrap().unwrap().len(), MAX_FRAME_BYTES, "a frame of the cap is read");
    }
}
