//! What the preload tests share: finding the library, compiling the C test programs,
//! free ports, and skipping (or, with `CORESIDENT_REQUIRE_PROGRAMS=1`, failing) when a
//! Debian program is missing.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `libcoresident_preload.so` as cargo built it for these tests.
pub fn library() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    for c in [
        deps.join("libcoresident_preload.so"),
        deps.parent().unwrap().join("libcoresident_preload.so"),
    ] {
        if c.is_file() {
            return c;
        }
    }
    panic!(
        "libcoresident_preload.so not found beside {}",
        exe.display()
    );
}

/// Whether `prog` is on `PATH`. Missing: a skip (with a message saying how to install
/// it), or a failure when `CORESIDENT_REQUIRE_PROGRAMS=1` (as `.ci/run` sets), so a
/// missing program can never make CI pass silently.
pub fn have(prog: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()));
    if found {
        return true;
    }
    let msg = format!(
        "{prog} is not installed (apt-get install -y sockperf iperf3 redis-server redis-tools socat gcc)"
    );
    if std::env::var_os("CORESIDENT_REQUIRE_PROGRAMS").is_some_and(|v| v == "1") {
        panic!("{msg}, and CORESIDENT_REQUIRE_PROGRAMS=1");
    }
    eprintln!("SKIP: {msg}; set CORESIDENT_REQUIRE_PROGRAMS=1 to make this a failure");
    false
}

/// Compiles `tests/c/NAME.c` (once per test binary) and returns the executable.
pub fn c_program(name: &str) -> Option<PathBuf> {
    if !have("cc") {
        return None;
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../preload/tests/c")
        .join(format!("{name}.c"));
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    // One compile per test binary; the tests of a binary run in parallel threads.
    static ONCE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _once = ONCE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !out.is_file() {
        // Compiled under another name, then renamed: nobody runs a half-written file.
        let tmp = out.with_extension("tmp");
        let st = Command::new("cc")
            .args(["-O1", "-Wall", "-pthread", "-o"])
            .arg(&tmp)
            .arg(&src)
            .status()
            .expect("cc runs");
        assert!(st.success(), "cc failed on {}", src.display());
        std::fs::rename(&tmp, &out).unwrap();
    }
    Some(out)
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// How a program runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Without the library.
    Plain,
    /// Under the library.
    Preloaded,
}

/// A command in `mode`, with a private registry directory.
pub fn command(prog: impl AsRef<std::ffi::OsStr>, mode: Mode, registry: &Path) -> Command {
    let mut c = Command::new(prog);
    c.env_remove("LD_PRELOAD")
        .env_remove("CORESIDENT_INPROC")
        .env_remove("CORESIDENT_DISABLE");
    if mode == Mode::Preloaded {
        c.env("LD_PRELOAD", library())
            .env("CORESIDENT_REGISTRY", registry);
    }
    c
}

/// A fresh private directory under the target's temporary directory, removed when the
/// guard drops: the 1 GiB transfers of `.ci/run` leave gigabytes behind otherwise, and a
/// CI machine's disk is not large. A test that panics keeps its directory, to be read.
pub fn tempdir(tag: &str) -> TempDir {
    use std::os::unix::fs::PermissionsExt;
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "{tag}-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos() ^ u128::from(rand_u32())
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
    TempDir(d)
}

/// A directory that [`tempdir`] made; it goes when this drops (unless the test panicked).
pub struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for TempDir {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A little randomness without a dependency.
pub fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .unwrap();
    u32::from_ne_bytes(b)
}

/// Runs `c` to completion with a watchdog: killed (and the test failed) if it makes no
/// exit within `limit`.
pub fn run_bounded(mut c: Command, limit: Duration) -> Output {
    let child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_bounded(child, limit)
}

/// Waits for `child` with a watchdog (see [`run_bounded`]).
pub fn wait_bounded(mut child: Child, limit: Duration) -> Output {
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "watchdog: no exit within {limit:?}\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A background process, killed when dropped (so a failed test leaves nothing behind).
pub struct Background(Option<Child>);

impl Background {
    /// Watches `child`.
    pub fn new(child: Child) -> Self {
        Self(Some(child))
    }

    /// Waits for the process to exit by itself (watchdog: `limit`).
    pub fn finish(mut self, limit: Duration) -> Output {
        wait_bounded(self.0.take().unwrap(), limit)
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits until a TCP socket listens on `port` (watchdog: 10 s), by `/proc/net/tcp*`,
/// without connecting (a one-shot listener must not see a probe).
pub fn wait_listening(port: u16) {
    let start = Instant::now();
    let hex = format!(":{port:04X} ");
    loop {
        let listening = ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|f| {
            std::fs::read_to_string(f).is_ok_and(|t| {
                t.lines().skip(1).any(|l| {
                    let cols: Vec<&str> = l.split_whitespace().collect();
                    cols.len() > 3 && format!("{} ", cols[1]).ends_with(&hex) && cols[3] == "0A"
                })
            })
        });
        if listening {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "nothing listens on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until a UDP socket is bound to `port` (watchdog: 10 s).
pub fn wait_udp_bound(port: u16) {
    let start = Instant::now();
    let hex = format!(":{port:04X}");
    loop {
        let bound = std::fs::read_to_string("/proc/net/udp").is_ok_and(|t| {
            t.lines().skip(1).any(|l| {
                l.split_whitespace()
                    .nth(1)
                    .is_some_and(|a| a.ends_with(&hex))
            })
        });
        if bound {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "nothing bound to udp {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The SHA-256 of a file, by `sha256sum`.
pub fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// A file of `len` random bytes.
pub fn random_file(dir: &Path, name: &str, len: usize) -> PathBuf {
    let p = dir.join(name);
    let st = Command::new("head")
        .arg("-c")
        .arg(len.to_string())
        .arg("/dev/urandom")
        .stdout(std::fs::File::create(&p).unwrap())
        .status()
        .unwrap();
    assert!(st.success());
    p
}
