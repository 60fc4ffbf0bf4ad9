//! Where the trusted core lives: in this process behind its message API, or in the
//! dedicated `shadownet-enclave` process reached only through framed messages on its
//! stdin/stdout.
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use shadownet_enclave::wire::{self, Channel, MemoryStats, Reply, Request, Shm};
use shadownet_trusted::{HostToTee, HostToTeeRef, Payload, Platform, TeeToHost, TrustedCore};

use crate::{Error, Result};

pub trait Enclave: Send {
    fn call(&mut self, msg: HostToTee) -> Result<TeeToHost>;
    /// `LinearDone` with the result and the chunks lent from the host's buffers: the
    /// in-process core reads them where they lie, the process gets them written once into
    /// the shared region (megabytes per inference: no copy into a message first).
    fn linear_done(&mut self, layer: u32, output: &Payload, chunks: &[&[u8]]) -> Result<TeeToHost> {
        self.call(HostToTee::LinearDone {
            layer,
            output: output.clone(),
            chunks: chunks.iter().map(|c| c.to_vec()).collect(),
        })
    }
    /// The enclave's heap now and its peak since the previous call, where it can be
    /// measured (the enclave process).
    fn memory(&mut self) -> Result<Option<MemoryStats>> {
        Ok(None)
    }
}

/// The trusted core in this process (no isolation: the host process holds the key).
pub struct InProcEnclave {
    core: TrustedCore,
}

impl InProcEnclave {
    pub fn new(device_record: &[u8], platform: Box<dyn Platform>) -> Result<Self> {
        Ok(InProcEnclave {
            core: TrustedCore::new(device_record, platform).map_err(Error::Tee)?,
        })
    }

    /// With the counters beside the key file, as the enclave process keeps them.
    pub fn with_file_counters(key_file: &Path) -> Result<Self> {
        let record = std::fs::read(key_file).map_err(|e| Error::Io {
            path: key_file.display().to_string(),
            source: e,
        })?;
        let device = shadownet_trusted::crypto::DeviceRecord::decode(&record).map_err(|e| {
            Error::BadFile {
                path: key_file.display().to_string(),
                what: e.to_string(),
            }
        })?;
        let platform = shadownet_enclave::FilePlatform::beside_key(key_file, &device.secret)
            .map_err(|e| Error::Io {
                path: format!("{}.counters", key_file.display()),
                source: e,
            })?;
        Self::new(&record, Box::new(platform))
    }

    /// The core itself (debug builds of `trace` attach an observer to it).
    pub fn core_mut(&mut self) -> &mut TrustedCore {
        &mut self.core
    }
}

impl Enclave for InProcEnclave {
    fn call(&mut self, msg: HostToTee) -> Result<TeeToHost> {
        Ok(self.core.handle(msg))
    }

    fn linear_done(&mut self, layer: u32, output: &Payload, chunks: &[&[u8]]) -> Result<TeeToHost> {
        Ok(self.core.handle_ref(HostToTeeRef::LinearDone {
            layer,
            output: output.as_ref(),
            chunks: chunks.to_vec(),
        }))
    }
}

/// The trusted core in the `shadownet-enclave` process. The child reads the device key
/// itself; this process never holds it.
pub struct ProcessEnclave {
    child: Child,
    ch: Channel<BufReader<ChildStdout>, ChildStdin>,
}

/// Each shared region's size: above any message of the models shadownet runs (the
/// regions are sparse, so untouched pages cost nothing).
const SHM_SIZE: usize = wire::MAX_FRAME;

/// The enclave binary: `SHADOWNET_ENCLAVE_BIN` if set, else `shadownet-enclave` beside
/// the running executable (where `cargo build --workspace` puts both). Run through
/// `cargo run` (which builds only `shadownet`), a missing one is built first.
pub fn enclave_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("SHADOWNET_ENCLAVE_BIN") {
        return Ok(p.into());
    }
    let exe = std::env::current_exe()
        .map_err(|e| Error::Enclave(format!("cannot locate this executable: {e}")))?;
    let name = format!("shadownet-enclave{}", std::env::consts::EXE_SUFFIX);
    // Test binaries live one directory below the binaries (target/*/deps).
    let candidates: Vec<PathBuf> = exe
        .parent()
        .into_iter()
        .chain(exe.parent().and_then(Path::parent))
        .map(|d| d.join(&name))
        .collect();
    if let Some(p) = candidates.iter().find(|p| p.is_file()) {
        return Ok(p.clone());
    }
    if let (Some(cargo), Some(dir)) = (std::env::var_os("CARGO"), exe.parent()) {
        let release = dir.file_name().is_some_and(|n| n == "release");
        eprintln!("building the enclave binary (once): cargo build -p shadownet-enclave");
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", "shadownet-enclave"]);
        if release {
            cmd.arg("--release");
        }
        if let Ok(st) = cmd.status() {
            if st.success() && candidates[0].is_file() {
                return Ok(candidates[0].clone());
            }
        }
    }
    Err(Error::Enclave(format!(
        "the enclave binary shadownet-enclave is not beside {}: build it with `cargo build --release --workspace`, or set SHADOWNET_ENCLAVE_BIN",
        exe.display()
    )))
}

impl ProcessEnclave {
    pub fn spawn(exe: &Path, key_file: &Path) -> Result<Self> {
        // Tensors cross in shared memory where the OS has it; control stays on the pipes.
        let regions = shared_regions();
        let mut cmd = Command::new(exe);
        cmd.arg("--key").arg(key_file);
        if let Some((tx, rx)) = &regions {
            use std::os::fd::AsRawFd;
            cmd.arg("--shm-in")
                .arg(tx.fd().as_raw_fd().to_string())
                .arg("--shm-out")
                .arg(rx.fd().as_raw_fd().to_string())
                .arg("--shm-size")
                .arg(SHM_SIZE.to_string());
        }
        let mut child = cmd
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
            ch: Channel::new(BufReader::with_capacity(1 << 20, stdout), stdin, regions),
        })
    }

    /// The child's process id (tests check it cannot be traced).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn request(&mut self, req: &impl serde::Serialize) -> Result<Reply> {
        let gone = |e: wire::FrameError| {
            Error::Enclave(format!("the enclave process stopped answering: {e}"))
        };
        self.ch.send(req).map_err(gone)?;
        self.ch.recv::<Reply>().map_err(gone)?.ok_or_else(|| {
            Error::Enclave("the enclave process exited (see its message above)".into())
        })
    }
}

/// Two shared regions (host → enclave, enclave → host), inherited by the child; `None`
/// where the OS has none (the pipes carry everything then).
fn shared_regions() -> Option<(Shm, Shm)> {
    #[cfg(target_os = "linux")]
    {
        if std::env::var_os("SHADOWNET_ENCLAVE_NO_SHM").is_none() {
            if let (Ok(a), Ok(b)) = (Shm::create(SHM_SIZE), Shm::create(SHM_SIZE)) {
                return Some((a, b));
            }
        }
    }
    None
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
        core_reply(self.request(&Request::Core(msg))?)
    }

    fn linear_done(&mut self, layer: u32, output: &Payload, chunks: &[&[u8]]) -> Result<TeeToHost> {
        core_reply(self.request(&wire::LinearDoneOut {
            layer,
            output,
            chunks,
        })?)
    }

    fn memory(&mut self) -> Result<Option<MemoryStats>> {
        match self.request(&Request::Stats)? {
            Reply::Stats(s) => Ok(Some(s)),
            Reply::Core(_) => Err(Error::Protocol(
                "a core reply to a statistics request".into(),
            )),
        }
    }
}

fn core_reply(r: Reply) -> Result<TeeToHost> {
    match r {
        Reply::Core(r) => Ok(r),
        Reply::Stats(_) => Err(Error::Protocol(
            "a statistics reply to a core message".into(),
        )),
    }
}

impl Drop for ProcessEnclave {
    fn drop(&mut self) {
        // Reap the child so no zombie is left.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
