//! `shadownet-enclave --key DEVICE.key`: the trusted core in a process of its own, serving
//! length-prefixed messages on stdin/stdout. The host starts it and never holds the key.
//! It reads the device record and opens its counter file, hardens itself (not dumpable,
//! memory locked, seccomp), then serves until the host closes the pipe.
use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{BufReader, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};

use shadownet_enclave::wire::{self, MemoryStats};
use shadownet_enclave::FilePlatform;
use shadownet_trusted::TrustedCore;

/// The process's live and peak heap bytes: everything the trusted core holds, which is
/// what a TEE's secure memory would have to hold.
struct Counting;

static LIVE: AtomicU64 = AtomicU64::new(0);
static PEAK: AtomicU64 = AtomicU64::new(0);

fn grew(by: u64) {
    let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: forwards every call to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = System.alloc(l);
        if !p.is_null() {
            grew(l.size() as u64);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(l);
        if !p.is_null() {
            grew(l.size() as u64);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l);
        LIVE.fetch_sub(l.size() as u64, Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = System.realloc(p, l, new);
        if !q.is_null() {
            if new >= l.size() {
                grew((new - l.size()) as u64);
            } else {
                LIVE.fetch_sub((l.size() - new) as u64, Ordering::Relaxed);
            }
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The heap now and its peak since the previous call, which starts a new peak window:
/// the host asks once after opening (and precomputing) and once after inferring, so the
/// second peak is inference alone.
fn stats() -> MemoryStats {
    let live = LIVE.load(Ordering::Relaxed);
    let peak = PEAK.swap(live, Ordering::Relaxed);
    MemoryStats { live, peak }
}

fn main() -> ExitCode {
    shadownet_enclave::keep_freed_memory();
    let mut key: Option<PathBuf> = None;
    let mut sandbox = true;
    let mut selftest = false;
    // Shared regions the host made: (fd it writes / we read, fd we write, size).
    let mut shm: (Option<i32>, Option<i32>, usize) = (None, None, 0);
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        let mut num = || {
            args.next()
                .and_then(|v| v.to_str().and_then(|s| s.parse::<usize>().ok()))
        };
        match a.to_str() {
            Some("--key") => key = args.next().map(PathBuf::from),
            Some("--shm-in") => shm.0 = num().map(|v| v as i32),
            Some("--shm-out") => shm.1 = num().map(|v| v as i32),
            Some("--shm-size") => shm.2 = num().unwrap_or(0),
            Some("--no-seccomp") => sandbox = false,
            // Hardens, then makes a system call the filter forbids: the process must die.
            Some("--selftest-forbidden-syscall") => selftest = true,
            _ => {
                eprintln!("usage: shadownet-enclave --key DEVICE.key [--no-seccomp]");
                return ExitCode::from(2);
            }
        }
    }
    let Some(key) = key else {
        eprintln!("shadownet-enclave: --key DEVICE.key is required");
        return ExitCode::from(2);
    };
    let record = match std::fs::read(&key) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("shadownet-enclave: cannot read {}: {e}", key.display());
            return ExitCode::from(2);
        }
    };
    let device = match shadownet_trusted::crypto::DeviceRecord::decode(&record) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("shadownet-enclave: {}: {e}", key.display());
            return ExitCode::from(2);
        }
    };
    let platform = match FilePlatform::beside_key(&key, &device.secret) {
        Ok(p) => p,
        Err(e) => {
            eprintln!(
                "shadownet-enclave: cannot open the counter file beside {}: {e}",
                key.display()
            );
            return ExitCode::from(2);
        }
    };
    drop(device);
    let mut core = match TrustedCore::new(&record, Box::new(platform)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("shadownet-enclave: {e}");
            return ExitCode::from(2);
        }
    };
    drop(record);
    // The shared regions are mapped before the sandbox closes mmap of new files.
    let regions = match shm {
        #[cfg(target_os = "linux")]
        (Some(rx), Some(tx), size) if size > 0 => {
            match (wire::Shm::inherit(tx, size), wire::Shm::inherit(rx, size)) {
                (Ok(t), Ok(r)) => Some((t, r)),
                (Err(e), _) | (_, Err(e)) => {
                    eprintln!("shadownet-enclave: cannot map the shared regions: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        _ => None,
    };
    #[cfg(target_os = "linux")]
    {
        let report = shadownet_enclave::sandbox::harden(sandbox || selftest);
        for n in &report.notes {
            eprintln!("shadownet-enclave: warning: {n}");
        }
        if selftest {
            // Opening a file is outside the filter: the kernel kills us here.
            let _ = std::fs::File::open("/etc/hostname");
            eprintln!("shadownet-enclave: the forbidden system call was allowed");
            return ExitCode::from(3);
        }
    }
    let stdin = std::io::stdin();
    let input = BufReader::with_capacity(1 << 20, stdin.lock());
    let stdout = std::io::stdout();
    let mut ch = wire::Channel::new(input, stdout.lock(), regions);
    match wire::serve(&mut core, &mut ch, stats) {
        Ok(()) => {
            let _ = ch.w.flush();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("shadownet-enclave: {e}");
            ExitCode::from(1)
        }
    }
}
