//! Length-prefixed JSON frames: a u32 big-endian byte count, then that many bytes of JSON.

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest frame either side accepts (a snapshot chunk or a batch of entries fits well
/// below). A bigger length prefix means a broken or hostile peer: the connection is closed.
pub const MAX_FRAME_BYTES: u32 = 64 * 1024 * 1024;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: u64, max: u32 },
    #[error("frame is not valid JSON for this message: {0}")]
    Decode(serde_json::Error),
    #[error("message cannot be encoded: {0}")]
    Encode(serde_json::Error),
}

/// Encodes `message` and writes it as one frame, then flushes.
pub async fn write_frame<W, T>(writer: &mut W, message: &T) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    write_encoded(writer, &encode_frame(message)?).await
}

/// `message` as one frame: the length prefix, then its JSON.
pub fn encode_frame<T: Serialize>(message: &T) -> Result<Vec<u8>, FrameError> {
    let mut frame = vec![0u8; 4];
    serde_json::to_writer(&mut frame, message).map_err(FrameError::Encode)?;
    finish_frame(frame)
}

/// A frame whose body (after 4 bytes left for its length) was written by the caller: fills in
/// the length prefix.
pub fn finish_frame(mut frame: Vec<u8>) -> Result<Vec<u8>, FrameError> {
    let body = frame.len().saturating_sub(4);
    let len = u32::try_from(body)
        .ok()
        .filter(|len| *len <= MAX_FRAME_BYTES)
        .ok_or(FrameError::TooLarge {
            len: body as u64,
            max: MAX_FRAME_BYTES,
        })?;
    frame[..4].copy_from_slice(&len.to_be_bytes());
    Ok(frame)
}

/// Writes an encoded frame and flushes.
pub async fn write_encoded<W: AsyncWrite + Unpin>(
    writer: &mut W,
    frame: &[u8],
) -> Result<(), FrameError> {
    writer.write_all(frame).await?;
    writer.flush().await?;
    Ok(())
}

/// Reads one frame and decodes it; rejects a length prefix over `MAX_FRAME_BYTES` before
/// allocating anything.
pub async fn read_frame<R, T>(reader: &mut R) -> Result<T, FrameError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let len = reader.read_u32().await?;
    if len > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge {
            len: u64::from(len),
            max: MAX_FRAME_BYTES,
        });
    }
    let mut body = vec![0u8; len as usize];
    reader.read_exact(&mut body).await?;
    serde_json::from_slice(&body).map_err(FrameError::Decode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        write_frame(&mut a, &vec![1u32, 2, 3]).await.unwrap();
        let got: Vec<u32> = read_frame(&mut b).await.unwrap();
        assert_eq!(got, vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn oversized_length_is_rejected_without_reading_the_body() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&(MAX_FRAME_BYTES + 1).to_be_bytes())
            .await
            .unwrap();
        let err = read_frame::<_, u32>(&mut b).await.unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
    }

    #[tokio::test]
    async fn garbage_is_a_decode_error() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&3u32.to_be_bytes()).await.unwrap();
        a.write_all(b"{{{").await.unwrap();
        let err = read_frame::<_, u32>(&mut b).await.unwrap_err();
        assert!(matches!(err, FrameError::Decode(_)), "{err}");
    }
}
