//! Frames between the host and the enclave process: a u32 length (LE), then a postcard
//! message. Both sides refuse frames above [`MAX_FRAME`], so a corrupt or hostile length
//! cannot make either allocate wildly.
//!
//! With shared memory ([`Shm`], Linux), a message is encoded straight into a region both
//! processes map and only its length crosses the pipe (with [`IN_SHM`] set): one copy each
//! way instead of a write into the pipe, a read out of it and a decode. One region per
//! direction; the protocol alternates strictly, so neither side writes a region while the
//! other reads it. A host that scribbles on the region while the enclave works can only
//! change what it sent, never what was checked: the enclave decodes a request's small
//! fields into its own memory; the hardened core reads a result tensor or pool body in
//! place one row at a time, copying each row into its own buffer before checking or using
//! it, so every word its integrity check sees is the word it restores; sealed chunks are
//! copied in before they are authenticated. The paper scheme's restore reads its f32
//! result in place (a fake channel once per real channel paired with it): that scheme
//! checks nothing, so a host changing the region mid-read only sends other numbers, which
//! it could have sent anyway, and every restored value is checked finite where the core
//! wrote it.
use std::io::{Read, Write};

use serde::{Deserialize, Serialize};
use shadownet_trusted::{HostToTee, HostToTeeRef, TeeToHost};

/// The largest frame either side accepts: above the largest tensor or chunk of the models
/// shadownet runs (the core bounds chunks at 256 MiB itself).
pub const MAX_FRAME: usize = 512 << 20;

/// Set in a frame's length word: the message lies in the shared region, not in the pipe.
pub const IN_SHM: u32 = 1 << 31;

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

/// `Request::Core(HostToTee::LinearDone { .. })` with the result and the chunks lent
/// rather than owned: encodes exactly as that message (a test pins it), so the host
/// writes the chunks from its file buffer straight into the frame without copying them
/// into a message first.
pub struct LinearDoneOut<'a> {
    pub layer: u32,
    pub output: &'a shadownet_trusted::Payload,
    pub chunks: &'a [&'a [u8]],
}

impl Serialize for LinearDoneOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct Inner<'a>(&'a LinearDoneOut<'a>);
        impl Serialize for Inner<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeStructVariant;
                let m = self.0;
                let chunks: Vec<&serde_bytes::Bytes> = m
                    .chunks
                    .iter()
                    .map(|c| serde_bytes::Bytes::new(c))
                    .collect();
                // HostToTee's third variant.
                let mut v = s.serialize_struct_variant("HostToTee", 2, "LinearDone", 3)?;
                v.serialize_field("layer", &m.layer)?;
                v.serialize_field("output", m.output)?;
                v.serialize_field("chunks", &chunks)?;
                v.end()
            }
        }
        s.serialize_newtype_variant("Request", 0, "Core", &Inner(self))
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryStats {
    /// Heap bytes live now.
    pub live: u64,
    /// The most heap bytes live at once since the previous `Stats` request (or the
    /// process's start).
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
    let Some(word) = read_len(r)? else {
        return Ok(None);
    };
    if word & IN_SHM != 0 {
        return Err(FrameError::Io(std::io::Error::other(
            "a shared-memory frame on a channel without shared memory",
        )));
    }
    read_body(r, word as usize).map(Some)
}

fn read_len(r: &mut impl Read) -> Result<Option<u32>, FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => Ok(Some(u32::from_le_bytes(len))),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn read_body(r: &mut impl Read, n: usize) -> Result<Vec<u8>, FrameError> {
    if n > MAX_FRAME {
        return Err(FrameError::TooLarge(n));
    }
    // Read into fresh capacity rather than a zeroed buffer: zeroing is a pass for nothing.
    let mut buf = Vec::with_capacity(n);
    r.take(n as u64).read_to_end(&mut buf)?;
    if buf.len() != n {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
    }
    Ok(buf)
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

/// One side of the host ⇄ enclave link: the pipes, and shared regions when there are.
pub struct Channel<R, W> {
    pub r: R,
    pub w: W,
    /// (region this side writes, region it reads).
    shm: Option<(Shm, Shm)>,
}

impl<R: Read, W: Write> Channel<R, W> {
    pub fn new(r: R, w: W, shm: Option<(Shm, Shm)>) -> Self {
        Channel { r, w, shm }
    }

    /// Sends `msg`: into the shared region when it fits, else through the pipe.
    pub fn send<T: Serialize>(&mut self, msg: &T) -> Result<(), FrameError> {
        if let Some((tx, _)) = self.shm.as_mut() {
            // Sized first, so an oversized message never half-overwrites the region.
            let n: usize =
                postcard::serialize_with_flavor(msg, postcard::ser_flavors::Size::default())
                    .map_err(FrameError::Decode)?;
            if n <= tx.len() && n <= MAX_FRAME {
                postcard::to_slice(msg, tx.as_mut_slice()).map_err(FrameError::Decode)?;
                self.w.write_all(&(n as u32 | IN_SHM).to_le_bytes())?;
                self.w.flush()?;
                return Ok(());
            }
        }
        send(&mut self.w, msg)
    }

    /// Receives a message; `Ok(None)` on a clean end of stream.
    pub fn recv<T: for<'de> Deserialize<'de>>(&mut self) -> Result<Option<T>, FrameError> {
        match self.recv_with(|b| postcard::from_bytes(b))? {
            Some(Ok(m)) => Ok(Some(m)),
            Some(Err(e)) => Err(FrameError::Decode(e)),
            None => Ok(None),
        }
    }

    /// Receives a frame and hands its bytes to `f` where they lie: in the shared region
    /// (so a message can be decoded borrowing from it) or in a buffer read from the pipe.
    pub fn recv_with<T>(&mut self, f: impl FnOnce(&[u8]) -> T) -> Result<Option<T>, FrameError> {
        let Some(word) = read_len(&mut self.r)? else {
            return Ok(None);
        };
        let n = (word & !IN_SHM) as usize;
        if n > MAX_FRAME {
            return Err(FrameError::TooLarge(n));
        }
        if word & IN_SHM != 0 {
            let Some((_, rx)) = self.shm.as_ref() else {
                return Err(FrameError::Io(std::io::Error::other(
                    "a shared-memory frame on a channel without shared memory",
                )));
            };
            let bytes = rx.as_slice().get(..n).ok_or(FrameError::TooLarge(n))?;
            return Ok(Some(f(bytes)));
        }
        let b = read_body(&mut self.r, n)?;
        Ok(Some(f(&b)))
    }
}

/// [`Request`] decoded borrowing from the frame (same encoding, variant for variant), so
/// that the accelerator's result and the pool entry's body are read by the core where the
/// host put them instead of being copied into the enclave's memory first.
#[derive(Debug, Deserialize)]
enum RequestRef<'a> {
    Core(#[serde(borrow)] HostToTeeRef<'a>),
    Stats,
}

/// The enclave's loop: answer requests until the host closes the pipe. An undecodable
/// request gets a protocol error; `stats` reports the process's heap.
pub fn serve<R: Read, W: Write>(
    core: &mut shadownet_trusted::TrustedCore,
    ch: &mut Channel<R, W>,
    stats: impl Fn() -> MemoryStats,
) -> Result<(), FrameError> {
    loop {
        let reply = ch.recv_with(|bytes| match postcard::from_bytes::<RequestRef>(bytes) {
            Ok(RequestRef::Core(msg)) => Reply::Core(core.handle_ref(msg)),
            Ok(RequestRef::Stats) => Reply::Stats(stats()),
            Err(_) => Reply::Core(TeeToHost::Failed {
                error: shadownet_trusted::TeeError::UnexpectedMessage,
            }),
        })?;
        let Some(reply) = reply else {
            return Ok(());
        };
        ch.send(&reply)?;
    }
}

/// A memory region shared with the other process (a Linux memfd), mapped read-write.
pub struct Shm {
    ptr: *mut u8,
    len: usize,
    fd: std::os::fd::OwnedFd,
}

// SAFETY: the mapping is owned by this value and only reached through &self / &mut self.
unsafe impl Send for Shm {}

impl Shm {
    /// A new region of `len` bytes (sparse: pages exist once written), inheritable by a
    /// child process.
    #[cfg(target_os = "linux")]
    pub fn create(len: usize) -> std::io::Result<Shm> {
        use std::os::fd::FromRawFd;
        // SAFETY: memfd_create reads the NUL-terminated name only.
        let fd = unsafe { libc::memfd_create(c"shadownet-enclave".as_ptr(), 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor this process owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        Self::map(fd, len, true)
    }

    /// Maps the region the parent passed as descriptor `fd`.
    #[cfg(target_os = "linux")]
    pub fn inherit(fd: i32, len: usize) -> std::io::Result<Shm> {
        use std::os::fd::FromRawFd;
        // SAFETY: the caller names a descriptor it received and owns from now on.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        Self::map(fd, len, false)
    }

    #[cfg(target_os = "linux")]
    fn map(fd: std::os::fd::OwnedFd, len: usize, size_it: bool) -> std::io::Result<Shm> {
        use std::os::fd::AsRawFd;
        // SAFETY: plain system calls on a descriptor we own; the mapping's validity is
        // checked before use.
        unsafe {
            if size_it && libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let ptr = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            );
            if ptr == libc::MAP_FAILED {
                return Err(std::io::Error::last_os_error());
            }
            Ok(Shm {
                ptr: ptr as *mut u8,
                len,
                fd,
            })
        }
    }

    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.fd.as_fd()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` bytes for as long as `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes this the only view in this process.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Shm {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        // SAFETY: unmaps exactly the mapping this value made.
        unsafe {
            libc::munmap(self.ptr as *mut libc::c_void, self.len);
        }
    }
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

    #[test]
    fn a_lent_linear_done_encodes_as_the_owned_one() {
        let output = shadownet_trusted::Payload::F32(shadownet_ir::Tensor {
            shape: vec![1, 2, 3],
            data: (0..6).map(|i| i as f32 * 0.5).collect(),
        });
        let chunks = [vec![1u8, 2, 3], vec![], vec![9u8; 300]];
        let owned = Request::Core(shadownet_trusted::HostToTee::LinearDone {
            layer: 300,
            output: output.clone(),
            chunks: chunks.to_vec(),
        });
        let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
        let lent = LinearDoneOut {
            layer: 300,
            output: &output,
            chunks: &refs,
        };
        assert_eq!(
            postcard::to_allocvec(&lent).unwrap(),
            postcard::to_allocvec(&owned).unwrap()
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn messages_cross_shared_memory_and_fall_back_to_the_pipe() {
        use std::os::fd::AsRawFd;
        let a = Shm::create(1 << 16).unwrap();
        let b = Shm::create(1 << 16).unwrap();
        // The other side's view of the same regions: the writer's region is the reader's.
        // SAFETY: dups of descriptors this test owns.
        let (da, db) = unsafe { (libc::dup(a.fd().as_raw_fd()), libc::dup(b.fd().as_raw_fd())) };
        let a2 = Shm::inherit(da, 1 << 16).unwrap();
        let b2 = Shm::inherit(db, 1 << 16).unwrap();
        let mut pipe = Vec::new();
        let mut host = Channel::new(&[][..], &mut pipe, Some((a, b)));
        host.send(&Request::Stats).unwrap();
        // Too large for the region: through the pipe.
        let big = Request::Core(shadownet_trusted::HostToTee::Chunks {
            chunks: vec![vec![7u8; 1 << 17]],
        });
        host.send(&big).unwrap();
        // Only the length of the first crossed the pipe.
        assert!(pipe.len() < (1 << 17) + 64 && pipe.len() > (1 << 17));
        let mut child = Channel::new(pipe.as_slice(), Vec::new(), Some((b2, a2)));
        let first = child.recv::<Request>();
        assert!(matches!(first, Ok(Some(Request::Stats))), "{first:?}");
        match child.recv::<Request>() {
            Ok(Some(Request::Core(shadownet_trusted::HostToTee::Chunks { chunks }))) => {
                assert_eq!(chunks[0], vec![7u8; 1 << 17])
            }
            other => panic!("{other:?}"),
        }
        // A flagged frame longer than the region is refused.
        let mut lie = Vec::new();
        lie.extend_from_slice(&((1u32 << 20) | IN_SHM).to_le_bytes());
        let (c, d) = (Shm::create(1 << 16).unwrap(), Shm::create(1 << 16).unwrap());
        let mut child = Channel::new(lie.as_slice(), Vec::new(), Some((c, d)));
        assert!(child.recv::<Request>().is_err());
    }
}
