//! The enclave process made as tight as Linux allows when there is no TEE.
//!
//! - `PR_SET_DUMPABLE = 0`: no core dumps, and no `ptrace` attach or `/proc/PID/mem` read
//!   by other processes of the same user (only a process with `CAP_SYS_PTRACE`, i.e. root,
//!   still can: the device owner of the threat model can always read this process, which is
//!   why a real deployment runs the core in a TEE).
//! - `mlockall`: the core's pages (device key, opened secrets, activations) never reach swap.
//! - seccomp: after start-up the process may only read and write its pipes and counter file
//!   and manage its memory; any other system call kills it.
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter};

/// What hardening took effect.
#[derive(Debug, Default)]
pub struct Report {
    pub not_dumpable: bool,
    pub memory_locked: bool,
    pub seccomp: bool,
    /// Steps that failed, and why.
    pub notes: Vec<String>,
}

/// System calls the serving loop needs (pipes, the counter file, the allocator, futexes of
/// the standard library, the random source) and nothing else.
const ALLOWED: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_fdatasync,
    libc::SYS_fsync,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_lseek,
    libc::SYS_close,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_futex,
    libc::SYS_getrandom,
    libc::SYS_sched_yield,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// Applies everything; `seccomp: false` leaves out the filter (for debugging the enclave).
pub fn harden(seccomp: bool) -> Report {
    // SAFETY: prctl with PR_SET_DUMPABLE reads no memory of ours.
    let not_dumpable = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } == 0;
    let mut r = Report {
        not_dumpable,
        ..Report::default()
    };
    if !r.not_dumpable {
        r.notes.push(format!(
            "PR_SET_DUMPABLE: {}",
            std::io::Error::last_os_error()
        ));
    }
    // Lock memory if the limit lets every future allocation stay locked; with a small
    // RLIMIT_MEMLOCK, MCL_FUTURE would make large allocations fail instead.
    let mut lim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit/getrlimit read and write only `lim`, which outlives the calls.
    unsafe {
        if libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) != 0 {
            libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim);
        }
    }
    if lim.rlim_cur == libc::RLIM_INFINITY || lim.rlim_cur >= 1 << 30 {
        // SAFETY: mlockall takes flags only.
        r.memory_locked = unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) } == 0;
        if !r.memory_locked {
            r.notes
                .push(format!("mlockall: {}", std::io::Error::last_os_error()));
        }
    } else {
        r.notes.push(format!(
            "memory not locked: RLIMIT_MEMLOCK is {} bytes (raise it to lock the core's pages)",
            lim.rlim_cur
        ));
    }
    if seccomp {
        match install_filter() {
            Ok(()) => r.seccomp = true,
            Err(e) => r.notes.push(format!("seccomp: {e}")),
        }
    }
    r
}

fn install_filter() -> Result<(), String> {
    let rules = ALLOWED.iter().map(|&s| (s, vec![])).collect();
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e| format!("{e:?}"))?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        arch,
    )
    .map_err(|e| e.to_string())?;
    let prog: BpfProgram = filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())?;
    seccompiler::apply_filter(&prog).map_err(|e| e.to_string())
}
