//! Where the trusted core lives: in this process behind its message API, or in a child
//! process reached only through a length-prefixed binary protocol on its stdin/stdout.
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use shadownet_trusted::{CounterError, HostToTee, Platform, TeeToHost, TrustedCore};

use crate::{Error, Result};

pub trait Enclave: Send {
    fn call(&mut self, msg: HostToTee) -> Result<TeeToHost>;
}

/// What this machine offers in place of a TEE's platform: the OS random source, and
/// monotonic counters in a file beside the device key, replaced atomically on update.
/// (On a device these are the TEE's RNG and its rollback-protected storage; a file can be
/// rolled back by whoever owns the disk, which is why real deployments use RPMB.)
pub struct FilePlatform {
    path: std::path::PathBuf,
}

impl FilePlatform {
    /// Counters for the key at `key_file` live in `<key_file>.counters`.
    pub fn beside_key(key_file: &Path) -> Self {
        let mut p = key_file.as_os_str().to_owned();
        p.push(".counters");
        FilePlatform { path: p.into() }
    }

    fn load(&self) -> Vec<(String, u64)> {
        std::fs::read_to_string(&self.path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(' ')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect()
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Platform for FilePlatform {
    fn random(&mut self, buf: &mut [u8]) {
        use rand_core::RngCore;
        rand_core::OsRng.fill_bytes(buf)
    }

    fn counter(&mut self, name: &[u8]) -> u64 {
        let k = hex(name);
        self.load()
            .into_iter()
            .find(|(n, _)| *n == k)
            .map_or(0, |(_, v)| v)
    }

    fn advance_counter(
        &mut self,
        name: &[u8],
        value: u64,
    ) -> std::result::Result<(), CounterError> {
        let k = hex(name);
        let mut all = self.load();
        match all.iter_mut().find(|(n, _)| *n == k) {
            Some((_, v)) if *v >= value => return Err(CounterError::NotMonotonic),
            Some((_, v)) => *v = value,
            None => all.push((k, value)),
        }
        let text: String = all.iter().map(|(n, v)| format!("{n} {v}\n")).collect();
        let tmp = self.path.with_extension("counters.partial");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        };
        write().map_err(|_| CounterError::Storage)
    }
}

/// The trusted core in this process, its kernels held to one thread: a TEE gets one core.
pub struct InProcEnclave {
    core: TrustedCore,
}

impl InProcEnclave {
    pub fn new(device_key: [u8; 32], platform: Box<dyn Platform>) -> Result<Self> {
        Ok(InProcEnclave {
            core: TrustedCore::new(device_key, platform),
        })
    }
}

impl Enclave for InProcEnclave {
    fn call(&mut self, msg: HostToTee) -> Result<TeeToHost> {
        let core = &mut self.core;
        Ok(shadownet_cpu::sequential(|| core.handle(msg)))
    }
}

/// Frames are capped so a corrupt length cannot make either side allocate wildly.
pub const MAX_FRAME: usize = 1 << 31;

/// Writes `msg` as one frame, encoding it straight into the pipe: tensors are most of a
/// message, and an encoded copy of a 20 MB activation is one more pass over memory.
pub fn send_message(w: &mut impl Write, msg: &impl serde::Serialize) -> std::io::Result<()> {
    let n: usize = postcard::serialize_with_flavor(msg, postcard::ser_flavors::Size::default())
        .map_err(std::io::Error::other)?;
    if n > MAX_FRAME {
        return Err(std::io::Error::other("frame too large"));
    }
    w.write_all(&(n as u32).to_le_bytes())?;
    let mut buffered = std::io::BufWriter::with_capacity(1 << 16, &mut *w);
    postcard::to_io(msg, &mut buffered).map_err(std::io::Error::other)?;
    buffered.flush()?;
    drop(buffered);
    w.flush()
}

/// Reads one frame; `Ok(None)` on a clean end of stream.
pub fn read_frame(r: &mut impl Read) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let n = u32::from_le_bytes(len) as usize;
    if n > MAX_FRAME {
        return Err(std::io::Error::other("frame too large"));
    }
    // Read into fresh capacity rather than a zeroed buffer: zeroing is a pass for nothing.
    let mut buf = Vec::with_capacity(n);
    r.take(n as u64).read_to_end(&mut buf)?;
    if buf.len() != n {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(Some(buf))
}

/// The trusted core in a child process (`shadownet enclave --key FILE`). The child reads
/// the device key itself; this process never holds it.
pub struct ProcessEnclave {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
}

impl ProcessEnclave {
    pub fn spawn(exe: &Path, key_file: &Path) -> Result<Self> {
        let mut child = Command::new(exe)
            .arg("enclave")
            .arg("--key")
            .arg(key_file)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| Error::Enclave(format!("cannot start {}: {e}", exe.display())))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(Error::Enclave("no pipes to the child".into()));
        };
        widen_pipe(&stdin);
        widen_pipe(&stdout);
        Ok(ProcessEnclave {
            child,
            stdin,
            stdout,
        })
    }
}

/// Asks for the largest pipe buffer an unprivileged process may have (Linux: 1 MiB by
/// default). With the default 64 KiB every megabyte of activation cost sixteen wake-ups of
/// each side; a failure only leaves the default.
fn widen_pipe(fd: &impl std::os::fd::AsRawFd) {
    #[cfg(target_os = "linux")]
    {
        let max = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
            .ok()
            .and_then(|s| s.trim().parse::<libc::c_int>().ok())
            .unwrap_or(1 << 20);
        // SAFETY: F_SETPIPE_SZ on a file descriptor we own; it reads no memory of ours.
        unsafe {
            libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, max);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = fd;
}

impl Enclave for ProcessEnclave {
    fn call(&mut self, msg: HostToTee) -> Result<TeeToHost> {
        let gone = |e: std::io::Error| {
            Error::Enclave(format!("the enclave process stopped answering: {e}"))
        };
        send_message(&mut self.stdin, &msg).map_err(gone)?;
        drop(msg);
        let reply = read_frame(&mut self.stdout).map_err(gone)?.ok_or_else(|| {
            Error::Enclave("the enclave process exited (see its message above)".into())
        })?;
        postcard::from_bytes(&reply).map_err(|e| Error::Enclave(format!("undecodable reply: {e}")))
    }
}

impl Drop for ProcessEnclave {
    fn drop(&mut self) {
        // Closing stdin ends the child's loop; reap it so no zombie is left.
        let _ = self.stdin.flush();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The child's side: serve messages on stdin/stdout until the host closes the pipe.
pub fn serve(
    core: &mut TrustedCore,
    input: &mut impl Read,
    output: &mut impl Write,
) -> std::io::Result<()> {
    while let Some(frame) = read_frame(input)? {
        let reply = match postcard::from_bytes::<HostToTee>(&frame) {
            Ok(msg) => core.handle(msg),
            Err(e) => TeeToHost::Failed {
                error: shadownet_trusted::TeeError::Protocol(format!("undecodable message: {e}")),
            },
        };
        send_message(output, &reply)?;
    }
    Ok(())
}

/// OS randomness with counters kept in memory: for tests and benchmarks, where nothing
/// outlives the process.
#[derive(Default)]
pub struct MemoryPlatform {
    counters: Vec<(Vec<u8>, u64)>,
}

impl Platform for MemoryPlatform {
    fn random(&mut self, buf: &mut [u8]) {
        use rand_core::RngCore;
        rand_core::OsRng.fill_bytes(buf)
    }

    fn counter(&mut self, name: &[u8]) -> u64 {
        self.counters
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, v)| *v)
    }

    fn advance_counter(
        &mut self,
        name: &[u8],
        value: u64,
    ) -> std::result::Result<(), CounterError> {
        match self.counters.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) if *v >= value => Err(CounterError::NotMonotonic),
            Some((_, v)) => {
                *v = value;
                Ok(())
            }
            None => {
                self.counters.push((name.to_vec(), value));
                Ok(())
            }
        }
    }
}
