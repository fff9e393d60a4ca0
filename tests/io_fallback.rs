//! The automatic epoll fallback, on a machine where io_uring works: the real binary is
//! started under a seccomp filter that makes `io_uring_setup` fail with EPERM (what
//! Docker's default profile does), so `--io auto` must warn, pick epoll and still carry
//! messages, and `--io uring` must refuse to start.

mod support;

use std::io::Read;
use std::mem::offset_of;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{uniq, wait_or_kill, Launch, RawClient};

const WAIT: Duration = Duration::from_secs(10);

/// `AUDIT_ARCH_*` from linux/audit.h (not in the libc crate): the ELF machine of the
/// syscall ABI, with the 64-bit and little-endian flags.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH_NATIVE: u32 = 0xC000_003E; // EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH_NATIVE: u32 = 0xC000_00B7; // EM_AARCH64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("tests/io_fallback.rs: add this architecture's AUDIT_ARCH_* value");

const fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

const fn jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// Installs, in the calling process (the forked child before exec), a seccomp filter
/// under which `io_uring_setup` fails with EPERM and every other syscall is allowed.
/// The filter survives exec and applies to every thread ringmq starts. Only
/// async-signal-safe calls (two `prctl`s on a stack array), as `pre_exec` requires.
fn deny_io_uring_setup() -> std::io::Result<()> {
    let load_word = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    let jump_eq = libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K;
    let ret = libc::BPF_RET | libc::BPF_K;
    let mut program = [
        stmt(load_word, offset_of!(libc::seccomp_data, arch) as u32),
        // Syscall numbers are per ABI: only the native one's are judged below.
        jump(jump_eq, AUDIT_ARCH_NATIVE, 1, 0),
        stmt(ret, libc::SECCOMP_RET_ALLOW),
        stmt(load_word, offset_of!(libc::seccomp_data, nr) as u32),
        jump(jump_eq, libc::SYS_io_uring_setup as u32, 0, 1),
        stmt(ret, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
        stmt(ret, libc::SECCOMP_RET_ALLOW),
    ];
    let prog = libc::sock_fprog {
        len: program.len() as libc::c_ushort,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: PR_SET_NO_NEW_PRIVS takes the value 1 and zeros; it only stops this
    // process from gaining privileges through exec, which an unprivileged process needs
    // before it may install a seccomp filter.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `prog` points at `program.len()` valid instructions that outlive the call
    // (the kernel copies the program); the filter only restricts this process.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &prog as *const libc::sock_fprog as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[test]
fn auto_falls_back_to_epoll_when_io_uring_setup_is_denied() {
    // `--io auto` named explicitly so RINGMQ_TEST_IO cannot replace it.
    let launch = Launch::new(&["--io", "auto", "--shards", "2", "--log-level", "info"])
        .env_remove("RUST_LOG")
        .startup_timeout(WAIT);
    // SAFETY: `deny_io_uring_setup` makes only async-signal-safe calls (see its doc).
    let broker = unsafe { launch.pre_exec(deny_io_uring_setup) }.spawn();
    let lines = broker.startup_lines();

    let warnings: Vec<&String> = lines.iter().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 1, "{lines:?}");
    assert!(
        warnings[0].ends_with(
            "io_uring unusable (Operation not permitted (os error 1)); falling back to epoll"
        ),
        "{lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("io_uring available")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("INFO")
            && l.contains("epoll: connections are plain fds, bounded by RLIMIT_NOFILE")),
        "{lines:?}"
    );
    let listening = broker.listening_line();
    assert_eq!(
        listening,
        format!("ringmq listening on {} (epoll, 2 shards)", broker.addr()),
    );

    // A real round trip through the epoll loops: QoS 1 and QoS 0, in order.
    let topic = format!("fallback/{}", uniq("t"));
    let mut sub = RawClient::connect_v311(broker.addr(), &uniq("fbsub"));
    sub.subscribe_ok(1, &topic, 1);
    let mut publisher = RawClient::connect_v311(broker.addr(), &uniq("fbpub"));
    publisher.publish_complete(&topic, 1, false, 7, b"over epoll");
    publisher.publish_complete(&topic, 0, false, 0, b"and again");
    let first = sub.recv_publish_ack();
    assert_eq!(
        (first.topic.as_str(), first.qos, &first.payload[..]),
        (topic.as_str(), 1, &b"over epoll"[..])
    );
    let second = sub.recv_publish();
    assert_eq!(
        (second.topic.as_str(), second.qos, &second.payload[..]),
        (topic.as_str(), 0, &b"and again"[..])
    );
    sub.disconnect();
    publisher.disconnect();
}

#[test]
fn forced_uring_refuses_to_start_when_io_uring_setup_is_denied() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringmq"));
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--io",
        "uring",
        "--log-level",
        "info",
    ])
    .env_remove("RUST_LOG")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    // SAFETY: `deny_io_uring_setup` makes only async-signal-safe calls (see its doc).
    unsafe { cmd.pre_exec(deny_io_uring_setup) };
    let mut child = cmd.spawn().expect("spawn ringmq");
    // Still running at the deadline: it started despite the filter (killed by PID).
    let status = wait_or_kill(&mut child, WAIT).unwrap_or_else(|| {
        panic!("ringmq --io uring did not exit within {WAIT:?} without io_uring")
    });
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr is piped")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.ends_with(
            "ringmq: --io uring: io_uring unusable here: Operation not permitted (os error 1)\n"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("listening on"), "{stderr}");
}
