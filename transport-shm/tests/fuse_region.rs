//! Issue 17 finding 5: a hostile peer passes a file on a FUSE file system it serves as
//! the "memfd", and its server never answers `GETATTR`, `STATFS` or `FLUSH`. Before the
//! fix, `validate_memfd` called `fstat` first and blocked forever. Now the seal check
//! comes first (answered by shmem alone, it fails at once for a FUSE file), and the
//! refused descriptor is closed on a background thread, because closing it sends a
//! `FLUSH` the server may never answer either.
//!
//! The FUSE server is a minimal one written here against the kernel's protocol
//! (`include/uapi/linux/fuse.h`, 7.31): it mounts through `/dev/fuse` (root only, as
//! CI runs), serves one regular file `f`, and once "armed" ignores every request on
//! it. Skipped (with a message) where `/dev/fuse` does not exist.
#![cfg(target_os = "linux")]

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use coresident::ChannelLayout;
use coresident_shm::rendezvous::send_with_fds;
use coresident_shm::wire::{encode_hello, region_alloc_size, Hello};
use coresident_shm::{accept_offer, AcceptConfig, HandshakeError, RegionError};

const WATCHDOG: Duration = Duration::from_secs(20);
/// The FUSE file's size: a valid region size for the hello.
const SIZE: u64 = region_alloc_size(ChannelLayout::symmetric(4096)) as u64;

// include/uapi/linux/fuse.h: opcodes.
const FUSE_LOOKUP: u32 = 1;
const FUSE_FORGET: u32 = 2;
const FUSE_GETATTR: u32 = 3;
const FUSE_OPEN: u32 = 14;
const FUSE_RELEASE: u32 = 18;
const FUSE_INIT: u32 = 26;
const FUSE_INTERRUPT: u32 = 36;
const FUSE_BATCH_FORGET: u32 = 42;
/// The root's node id, and our file's.
const ROOT: u64 = 1;
const FILE: u64 = 2;

/// A mounted test file system and its server thread.
struct Fuse {
    mnt: PathBuf,
    dev: Option<OwnedFd>,
    armed: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    server: Option<thread::JoinHandle<()>>,
    /// Descriptors of the file, closed only after the connection is aborted (a close
    /// sends a FLUSH the armed server never answers).
    files: Vec<OwnedFd>,
}

impl Drop for Fuse {
    fn drop(&mut self) {
        // Stop the server and close every /dev/fuse descriptor: the kernel aborts the
        // connection, and whatever still waits on it (our closer thread's FLUSH) fails.
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.server.take() {
            let _ = t.join();
        }
        drop(self.dev.take());
        self.files.clear();
        let _ = rustix::mount::unmount(&self.mnt, rustix::mount::UnmountFlags::DETACH);
    }
}

/// `include/uapi/linux/fuse.h: struct fuse_attr` (88 bytes).
fn attr(ino: u64, mode: u32, size: u64) -> Vec<u8> {
    let mut a = Vec::with_capacity(88);
    for v in [ino, size, size.div_ceil(512), 0, 0, 0] {
        a.extend_from_slice(&v.to_le_bytes());
    }
    for v in [0u32, 0, 0, mode, 1, 0, 0, 0, 4096, 0] {
        a.extend_from_slice(&v.to_le_bytes());
    }
    a
}

fn reply(dev: &OwnedFd, unique: u64, error: i32, payload: &[u8]) {
    // include/uapi/linux/fuse.h: struct fuse_out_header.
    let mut out = Vec::with_capacity(16 + payload.len());
    out.extend_from_slice(&(16 + payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&error.to_le_bytes());
    out.extend_from_slice(&unique.to_le_bytes());
    out.extend_from_slice(payload);
    let _ = rustix::io::write(dev, &out);
}

fn serve(dev: &OwnedFd, armed: &AtomicBool, stop: &AtomicBool) {
    let mut buf = vec![0u8; 1 << 18];
    while !stop.load(Ordering::SeqCst) {
        let mut fds = [rustix::event::PollFd::new(
            dev,
            rustix::event::PollFlags::IN,
        )];
        let ts = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 20_000_000,
        };
        if rustix::event::poll(&mut fds, Some(&ts)).unwrap_or(0) == 0 {
            continue;
        }
        let Ok(n) = rustix::io::read(dev, &mut buf) else {
            continue;
        };
        if n < 40 {
            continue;
        }
        // include/uapi/linux/fuse.h: struct fuse_in_header (40 bytes).
        let opcode = u32::from_le_bytes(buf[4..8].try_into().unwrap());
        let unique = u64::from_le_bytes(buf[8..16].try_into().unwrap());
        let node = u64::from_le_bytes(buf[16..24].try_into().unwrap());
        let body = &buf[40..n];
        if armed.load(Ordering::SeqCst) && node == FILE {
            continue; // hostile: never answer anything about the file
        }
        match opcode {
            FUSE_INIT => {
                // struct fuse_init_out (64 bytes): 7.31, no features, 4 KiB writes.
                let mut out = Vec::with_capacity(64);
                for v in [7u32, 31, 0, 0] {
                    out.extend_from_slice(&v.to_le_bytes());
                }
                out.extend_from_slice(&[0; 4]); // max_background, congestion_threshold
                out.extend_from_slice(&4096u32.to_le_bytes()); // max_write
                out.extend_from_slice(&1u32.to_le_bytes()); // time_gran
                out.resize(64, 0);
                reply(dev, unique, 0, &out);
            }
            FUSE_LOOKUP => {
                if body.starts_with(b"f\0") {
                    // struct fuse_entry_out: nothing cached, so every stat asks.
                    let mut out = Vec::with_capacity(128);
                    for v in [FILE, 1, 0, 0] {
                        out.extend_from_slice(&v.to_le_bytes());
                    }
                    out.extend_from_slice(&[0; 8]);
                    out.extend(attr(FILE, 0o100_666, SIZE));
                    reply(dev, unique, 0, &out);
                } else {
                    reply(dev, unique, -libc::ENOENT, &[]);
                }
            }
            FUSE_GETATTR => {
                // struct fuse_attr_out.
                let mut out = vec![0u8; 16];
                let (ino, mode, size) = if node == ROOT {
                    (ROOT, 0o040_755, 0)
                } else {
                    (FILE, 0o100_666, SIZE)
                };
                out.extend(attr(ino, mode, size));
                reply(dev, unique, 0, &out);
            }
            FUSE_OPEN => reply(dev, unique, 0, &[0u8; 16]), // struct fuse_open_out
            FUSE_RELEASE => reply(dev, unique, 0, &[]),
            FUSE_FORGET | FUSE_BATCH_FORGET | FUSE_INTERRUPT => {}
            _ => reply(dev, unique, -libc::ENOSYS, &[]),
        }
    }
}

fn mount() -> Option<Fuse> {
    if !std::path::Path::new("/dev/fuse").exists() {
        eprintln!("skipped: no /dev/fuse on this machine");
        return None;
    }
    let mnt =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("fuse-{}", std::process::id()));
    let _ = rustix::mount::unmount(&mnt, rustix::mount::UnmountFlags::DETACH);
    std::fs::create_dir_all(&mnt).unwrap();
    let dev = rustix::fs::open(
        "/dev/fuse",
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .expect("open /dev/fuse (tests run as root)");
    let opts = std::ffi::CString::new(format!(
        "fd={},rootmode=40000,user_id=0,group_id=0",
        dev.as_raw_fd()
    ))
    .unwrap();
    rustix::mount::mount(
        "coresident-test",
        &mnt,
        "fuse",
        rustix::mount::MountFlags::NOSUID | rustix::mount::MountFlags::NODEV,
        opts.as_c_str(),
    )
    .expect("mount a FUSE file system (tests run as root)");
    let armed = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let server_dev = dev.try_clone().unwrap();
    let (a, s) = (armed.clone(), stop.clone());
    let server = thread::spawn(move || serve(&server_dev, &a, &s));
    Some(Fuse {
        mnt,
        dev: Some(dev),
        armed,
        stop,
        server: Some(server),
        files: Vec::new(),
    })
}

fn within_watchdog<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(WATCHDOG)
        .unwrap_or_else(|_| panic!("watchdog: {what} blocked on the hostile FUSE server"))
}

#[test]
fn a_fuse_file_as_the_region_is_refused_without_blocking() {
    // Declared first, dropped last: its drop aborts the connection, and only then are
    // the file's descriptors closed (also when an assertion fails).
    let Some(mut fuse) = mount() else { return };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(fuse.mnt.join("f"))
        .unwrap();
    fuse.files.push(file.into());
    fuse.armed.store(true, Ordering::SeqCst);
    let fd = fuse.files[0].as_fd();

    // The validation alone (the same function, with the same signature, as before the
    // fix: it called fstat first and never returned here).
    // (Each copy of the descriptor is closed only after the server is gone: a close
    // sends a FLUSH it never answers.)
    let probe = fd.try_clone_to_owned().unwrap();
    let (r, probe) = within_watchdog("validate_memfd", move || {
        (
            coresident_shm::memfd::validate_memfd(probe.as_fd(), SIZE),
            probe,
        )
    });
    fuse.files.push(probe);
    assert_eq!(r, Err(RegionError::NotMemfd));
    let fd = fuse.files[0].as_fd();

    // The whole acceptor: refuses it, and closing the refused descriptor (a FLUSH the
    // server never answers) does not hold it either.
    let layout = ChannelLayout::symmetric(4096);
    let hello = encode_hello(&Hello {
        region_size: SIZE,
        layout,
        offerer: "fuse-peer".parse().unwrap(),
        acceptor: None,
        context: Vec::new(),
    })
    .unwrap();
    let (ours, theirs) = UnixStream::pair().unwrap();
    send_with_fds(ours.as_fd(), &hello, &[fd]).unwrap();
    let r = within_watchdog("accept_offer", move || {
        accept_offer(theirs, &AcceptConfig::default()).map(|_| ())
    });
    assert_eq!(r, Err(HandshakeError::Region(RegionError::NotMemfd)));
    drop(ours);
}
