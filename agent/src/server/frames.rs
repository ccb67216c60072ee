//! Frames on one client connection: a reader that refuses oversized length prefixes before buffering
//! anything of them, and a writer that encodes [`ServerMessage`]s with the shared framing.

use bytes::{Buf as _, BytesMut};
use flowgate_proto::{
    codec::{self, CodecError, MAX_FRAME_BYTES},
    message::ServerMessage,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::unix::{OwnedReadHalf, OwnedWriteHalf},
};
use tokio_util::codec::{Decoder as _, Encoder as _, LengthDelimitedCodec};

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

/// Reads whole frames.
pub struct FrameReader {
    half: OwnedReadHalf,
    codec: LengthDelimitedCodec,
    buf: BytesMut,
}

impl FrameReader {
    pub fn new(half: OwnedReadHalf) -> Self {
        Self {
            half,
            codec: codec::framing(),
            buf: BytesMut::with_capacity(8 << 10),
        }
    }

    /// The next frame's body; `None` when the client closed the connection between frames.
    pub async fn next(&mut self) -> Result<Option<BytesMut>, FrameError> {
        loop {
            if self.buf.len() >= 4 {
                let len = self.buf.as_ref().get_u32() as usize;
                if len > MAX_FRAME_BYTES {
                    return Err(FrameError::TooLarge { len });
                }
            }
            // The length was checked above, so the codec can only fail on what it also checks: nothing.
            if let Some(frame) = self
                .codec
                .decode(&mut self.buf)
                .map_err(|source| FrameError::Read { source })?
            {
                return Ok(Some(frame));
            }
            if self.buf.capacity() - self.buf.len() < 4 << 10 {
                self.buf.reserve(16 << 10);
            }
            if self
                .half
                .read_buf(&mut self.buf)
                .await
                .map_err(|source| FrameError::Read { source })?
                == 0
            {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(FrameError::Truncated)
                };
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
        Self {
            half,
            codec: codec::framing(),
            out: BytesMut::new(),
        }
    }

    /// Encodes a message into its frame body (for callers that check the size first).
    pub fn encode(message: &ServerMessage) -> Result<bytes::Bytes, FrameError> {
        Ok(codec::encode("server", message)?)
    }

    /// Sends an encoded body as one frame.
    pub async fn send_body(&mut self, body: bytes::Bytes) -> Result<(), FrameError> {
        if body.len() > MAX_FRAME_BYTES {
            return Err(FrameError::TooLarge { len: body.len() });
        }
        self.out.clear();
        self.codec
            .encode(body, &mut self.out)
            .map_err(|source| FrameError::Write { source })?;
        self.half
            .write_all(&self.out)
            .await
            .map_err(|source| FrameError::Write { source })?;
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
