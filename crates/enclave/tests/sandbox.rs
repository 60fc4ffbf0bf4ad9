//! The enclave process as the OS sees it: another process of the same user cannot trace it
//! or read its memory, and a system call outside its filter kills it.
#![cfg(target_os = "linux")]
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::Command;

use shadownet_trusted::crypto::DeviceRecord;
use zeroize::Zeroizing;

fn enclave() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_shadownet-enclave"))
}

/// A device key in a fresh directory anyone may read (the test may run the enclave as
/// another user).
fn device_key(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shadownet-sandbox-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let key = dir.join("device.key");
    let rec = DeviceRecord {
        secret: Zeroizing::new([7u8; 32]),
        pinned: vec![],
    };
    std::fs::write(&key, rec.encode().as_slice()).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    key
}

#[test]
fn a_forbidden_system_call_kills_the_enclave() {
    let key = device_key("seccomp");
    let st = Command::new(enclave())
        .arg("--key")
        .arg(&key)
        .arg("--selftest-forbidden-syscall")
        .output()
        .unwrap();
    assert_eq!(
        st.status.signal(),
        Some(libc::SIGSYS),
        "the enclave survived a forbidden open(): {:?} {}",
        st.status,
        String::from_utf8_lossy(&st.stderr)
    );
}

/// Run as root, the test becomes an ordinary user for both sides; otherwise it stays the
/// same user: either way tracer and tracee share a user, the case PR_SET_DUMPABLE covers.
#[test]
fn another_process_of_the_same_user_cannot_trace_the_enclave() {
    let key = device_key("ptrace");
    // The "attacker": a program of the same user that starts the enclave (so Yama's
    // descendants-only rule would allow it), waits for it to harden, then tries to attach
    // to it and to read its memory; as a control it attaches to an ordinary child.
    let script = r#"
import ctypes, os, subprocess, sys, time
libc = ctypes.CDLL(None, use_errno=True)
PTRACE_ATTACH, PTRACE_DETACH = 16, 17
def attach(pid):
    r = libc.ptrace(PTRACE_ATTACH, pid, None, None)
    e = ctypes.get_errno()
    if r == 0:
        os.waitpid(pid, 0)
        libc.ptrace(PTRACE_DETACH, pid, None, None)
    return r, e
enc = subprocess.Popen([sys.argv[1], "--key", sys.argv[2]], stdin=subprocess.PIPE, stderr=subprocess.DEVNULL)
ctl = subprocess.Popen(["sleep", "30"])
# Hardened once its seccomp filter is in (installed after PR_SET_DUMPABLE); a fixed wait
# raced the enclave's start-up on a loaded machine.
deadline = time.time() + 20
while time.time() < deadline:
    try:
        if "Seccomp:\t2" in open("/proc/%d/status" % enc.pid).read():
            break
    except OSError:
        pass
    time.sleep(0.01)
r_enc, e_enc = attach(enc.pid)
try:
    open("/proc/%d/mem" % enc.pid, "rb").read(1)
    mem = "readable"
except OSError as ex:
    mem = "refused:%d" % ex.errno
r_ctl, e_ctl = attach(ctl.pid)
enc.kill(); ctl.kill()
print("enclave", r_enc, e_enc, mem)
print("control", r_ctl, e_ctl)
"#;
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(script).arg(enclave()).arg(&key);
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        cmd.uid(65534).gid(65534);
    }
    let out = cmd.output().expect("python3 is needed for this test");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = |tag: &str| -> Vec<String> {
        text.lines()
            .find(|l| l.starts_with(tag))
            .unwrap_or_else(|| panic!("no {tag} line in {text}"))
            .split_whitespace()
            .map(String::from)
            .collect()
    };
    let enc = line("enclave");
    let ctl = line("control");
    assert_eq!(
        ctl[1], "0",
        "the control attach failed ({text}): the test proves nothing here"
    );
    assert_eq!(enc[1], "-1", "the enclave could be traced: {text}");
    assert_eq!(enc[2], libc::EPERM.to_string(), "{text}");
    assert!(
        enc[3].starts_with("refused"),
        "the enclave's memory was readable: {text}"
    );
}
