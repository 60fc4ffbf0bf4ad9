//! Frames between the host and the enclave process: a u32 length (LE), then a postcard
//! message. Both sides refuse frames above [`MAX_FRAME`], so a corrupt or hostile length
//! cannot make either allocate wildly.
use std::io::{Read, Write};

use serde::{Deserialize, Serialize};
use shadownet_trusted::{HostToTee, TeeToHost};

/// The largest frame either side accepts: above the largest tensor or chunk of the models
/// shadownet runs (the core bounds chunks at 256 MiB itself).
pub const MAX_FRAME: usize = 512 << 20;

/// What the host sends the enclave process.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    Core(HostToTee),
    /// The process's memory statistics (counting allocator).
    Stats,
}

/// What the enclave process answers.
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    Core(TeeToHost),
    Stats(MemoryStats),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryStats {
    /// Heap bytes live now.
    pub live: u64,
    /// The most heap bytes ever live at once.
    pub peak: u64,
}

#[derive(Debug)]
pub enum FrameError {
    Io(std::io::Error),
    TooLarge(usize),
    Decode(postcard::Error),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Io(e) => write!(f, "{e}"),
            FrameError::TooLarge(n) => {
                write!(f, "a frame of {n} bytes, above the {MAX_FRAME}-byte limit")
            }
            FrameError::Decode(e) => write!(f, "undecodable frame: {e}"),
        }
    }
}

impl std::error::Error for FrameError {}

impl From<std::io::Error> for FrameError {
    fn from(e: std::io::Error) -> Self {
        FrameError::Io(e)
    }
}

/// Writes `msg` as one frame, encoding it straight into the pipe: tensors are most of a
/// message, and an encoded copy of a 20 MB activation is one more pass over memory.
pub fn send<T: Serialize>(w: &mut impl Write, msg: &T) -> Result<(), FrameError> {
    let n: usize = postcard::serialize_with_flavor(msg, postcard::ser_flavors::Size::default())
        .map_err(FrameError::Decode)?;
    if n > MAX_FRAME {
        return Err(FrameError::TooLarge(n));
    }
    w.write_all(&(n as u32).to_le_bytes())?;
    let mut buffered = std::io::BufWriter::with_capacity(1 << 16, &mut *w);
    postcard::to_io(msg, &mut buffered).map_err(FrameError::Decode)?;
    buffered.flush()?;
    drop(buffered);
    w.flush()?;
    Ok(())
}

/// Reads one frame; `Ok(None)` on a clean end of stream.
pub fn read_frame(r: &mut impl Read) -> Result<Option<Vec<u8>>, FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let n = u32::from_le_bytes(len) as usize;
    if n > MAX_FRAME {
        return Err(FrameError::TooLarge(n));
    }
    // Read into fresh capacity rather than a zeroed buffer: zeroing is a pass for nothing.
    let mut buf = Vec::with_capacity(n);
    r.take(n as u64).read_to_end(&mut buf)?;
    if buf.len() != n {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
    }
    Ok(Some(buf))
}

/// Reads and decodes one frame.
pub fn recv<T: for<'de> Deserialize<'de>>(r: &mut impl Read) -> Result<Option<T>, FrameError> {
    match read_frame(r)? {
        Some(b) => postcard::from_bytes(&b)
            .map(Some)
            .map_err(FrameError::Decode),
        None => Ok(None),
    }
}

/// The enclave's loop: answer requests until the host closes the pipe. An undecodable
/// request gets a protocol error; `stats` reports the process's heap.
pub fn serve(
    core: &mut shadownet_trusted::TrustedCore,
    input: &mut impl Read,
    output: &mut impl Write,
    stats: impl Fn() -> MemoryStats,
) -> Result<(), FrameError> {
    while let Some(frame) = read_frame(input)? {
        let reply = match postcard::from_bytes::<Request>(&frame) {
            Ok(Request::Core(msg)) => {
                drop(frame);
                Reply::Core(core.handle(msg))
            }
            Ok(Request::Stats) => Reply::Stats(stats()),
            Err(_) => Reply::Core(TeeToHost::Failed {
                error: shadownet_trusted::TeeError::UnexpectedMessage,
            }),
        };
        send(output, &reply)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_and_truncated_frames_are_refused() {
        let mut big = Vec::new();
        big.extend_from_slice(&((MAX_FRAME as u32) + 1).to_le_bytes());
        assert!(matches!(
            read_frame(&mut big.as_slice()),
            Err(FrameError::TooLarge(_))
        ));
        let mut short = Vec::new();
        short.extend_from_slice(&10u32.to_le_bytes());
        short.extend_from_slice(&[1, 2, 3]);
        assert!(matches!(
            read_frame(&mut short.as_slice()),
            Err(FrameError::Io(_))
        ));
        assert!(read_frame(&mut [].as_slice()).unwrap().is_none());
        let mut ok = Vec::new();
        send(&mut ok, &Request::Stats).unwrap();
        assert!(matches!(
            recv::<Request>(&mut ok.as_slice()),
            Ok(Some(Request::Stats))
        ));
    }
}
