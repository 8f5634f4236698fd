//! The socket client's tests against the shared fake xenstored
//! (`xenstore/fake.rs`), and against hostile daemons that send malformed
//! frames.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::Duration;

use zerocopy::IntoBytes;

use crate::protocol::xs_wire::{
    split_strings, Access, MsgType, Perm, ValueError, WireError, XsErrno, XsdSockmsg,
};
use crate::xenstore::fake::FakeXenstored;
use crate::xenstore::{WatchEvent, XenStore, XsClient, XsError};

fn send(s: &mut UnixStream, ty: u32, req_id: u32, body: &[u8]) {
    let h = XsdSockmsg {
        r#type: ty,
        req_id,
        tx_id: 0,
        len: body.len() as u32,
    };
    let mut m = h.as_bytes().to_vec();
    m.extend_from_slice(body);
    s.write_all(&m).unwrap();
}

fn recv(s: &mut UnixStream) -> Option<(XsdSockmsg, Vec<u8>)> {
    let mut h = [0u8; 16];
    s.read_exact(&mut h).ok()?;
    let h: XsdSockmsg = zerocopy::FromBytes::read_from_bytes(&h[..]).unwrap();
    let mut body = vec![0; h.len as usize];
    s.read_exact(&mut body).ok()?;
    Some((h, body))
}

/// A client of the shared fake daemon ([`FakeXenstored`]) connected as
/// dom0, and the daemon (to connect others, or look inside).
pub(crate) fn client() -> (XenStore<UnixStream>, FakeXenstored) {
    let fake = FakeXenstored::new();
    (fake.connect(0), fake)
}

#[test]
fn read_write_directory_rm() {
    let (mut xs, _t) = client();
    assert_eq!(xs.read("/a/b"), Err(XsError::NotFound));
    xs.write("/a/b", b"hello").unwrap();
    xs.write("/a/c", b"42").unwrap();
    xs.mkdir("/a/d").unwrap();
    assert_eq!(xs.read("/a/b").unwrap(), b"hello");
    assert_eq!(xs.read_string("/a/b").unwrap(), "hello");
    assert_eq!(xs.read_u32("/a/c").unwrap(), 42);
    assert_eq!(xs.children("/a").unwrap(), ["b", "c", "d"]);
    xs.rm("/a/b").unwrap();
    assert_eq!(xs.rm("/a/b"), Err(XsError::NotFound));
    assert_eq!(xs.children("/a").unwrap(), ["c", "d"]);
    assert_eq!(xs.directory("/a").unwrap().len(), 2);
    assert_eq!(xs.get_domain_path(5).unwrap(), b"/local/domain/5");
}

#[test]
fn hostile_values_are_typed_errors() {
    let (mut xs, _t) = client();
    for (v, e) in [
        (&b""[..], ValueError::Empty),
        (b"-1", ValueError::NotANumber),
        (b"12abc", ValueError::NotANumber),
        (b" 7", ValueError::NotANumber),
        (b"4294967296", ValueError::OutOfRange),
        (b"99999999999999999999999999", ValueError::OutOfRange),
    ] {
        xs.write("/v", v).unwrap();
        assert_eq!(xs.read_u32("/v"), Err(XsError::Value(e)), "{v:?}");
    }
    xs.write("/v", b"\xff\xfe").unwrap();
    assert_eq!(
        xs.read_string("/v"),
        Err(XsError::Value(ValueError::NotUtf8))
    );
    // The connection is still fine after value errors.
    assert_eq!(xs.read("/v").unwrap(), b"\xff\xfe");
    // Requests over the limits never leave the client.
    assert_eq!(
        xs.write("/big", &[b'x'; 4096]),
        Err(XsError::Wire(WireError::TooLong(4101)))
    );
    assert_eq!(xs.read("/a\0b"), Err(XsError::Wire(WireError::InteriorNul)));
    assert_eq!(xs.read(""), Err(XsError::Wire(WireError::BadPath)));
    xs.write("/ok", b"1").unwrap();
}

#[test]
fn permissions_round_trip() {
    let (mut xs, _t) = client();
    xs.write("/p", b"x").unwrap();
    let perms = [
        Perm {
            domid: 0,
            access: Access::None,
        },
        Perm {
            domid: 3,
            access: Access::Read,
        },
        Perm {
            domid: 4,
            access: Access::Both,
        },
    ];
    xs.set_perms("/p", &perms).unwrap();
    assert_eq!(xs.perms("/p").unwrap(), perms);
    let mut first = [perms[1]; 1];
    assert_eq!(xs.get_perms("/p", &mut first), Ok(3));
    assert_eq!(first, [perms[0]]);
    assert_eq!(
        xs.set_perms("/p", &[]),
        Err(XsError::Wire(WireError::Malformed))
    );
    assert_eq!(xs.set_perms("/nope", &perms), Err(XsError::NotFound));
}

#[test]
fn watch_events_are_demultiplexed_from_replies() {
    let (mut xs, _t) = client();
    xs.watch("/w", "tok").unwrap();
    // The initial event fires right after the reply.
    let ev = xs
        .wait_watch(Some(Duration::from_secs(5)))
        .unwrap()
        .unwrap();
    assert_eq!(
        ev,
        WatchEvent {
            path: b"/w",
            token: b"tok"
        }
    );
    // The event for this write arrives before the write's reply.
    xs.write("/w/x", b"1").unwrap();
    xs.write("/other", b"1").unwrap();
    xs.write("/w/y", b"2").unwrap();
    let a = xs
        .wait_watch(Some(Duration::from_secs(5)))
        .unwrap()
        .unwrap()
        .path
        .to_vec();
    let b = xs
        .wait_watch(Some(Duration::from_secs(5)))
        .unwrap()
        .unwrap()
        .path
        .to_vec();
    assert_eq!((&a[..], &b[..]), (&b"/w/x"[..], &b"/w/y"[..]));
    assert_eq!(
        xs.wait_watch(Some(Duration::from_millis(50))).unwrap(),
        None
    );
    xs.unwatch("/w", "tok").unwrap();
    xs.write("/w/z", b"3").unwrap();
    assert_eq!(
        xs.wait_watch(Some(Duration::from_millis(50))).unwrap(),
        None
    );
}

#[test]
fn transactions() {
    let (mut xs, fake) = client();
    let mut tx = xs.transaction().unwrap();
    tx.write("/t/a", b"1").unwrap();
    assert_eq!(tx.read("/t/a").unwrap(), b"1");
    tx.mkdir("/t/b").unwrap();
    assert_eq!(
        tx.directory("/t").unwrap().to_strings().unwrap(),
        ["a", "b"]
    );
    tx.rm("/t/b").unwrap();
    tx.commit().unwrap();
    // Another connection changes the store while a transaction is open:
    // its commit is refused, as xenstored's optimistic transactions are.
    let mut other = fake.connect(0);
    let tx = xs.transaction().unwrap();
    other.write("/conflict", b"").unwrap();
    assert_eq!(tx.commit(), Err(XsError::Daemon(XsErrno::EAGAIN)));
    drop(xs.transaction().unwrap()); // aborts on drop
    xs.transaction().unwrap().abort().unwrap();
    assert_eq!(xs.read("/t/a").unwrap(), b"1");
}

/// A daemon that answers the first request with `reply(req_id)`.
fn hostile(reply: impl FnOnce(&mut UnixStream, u32) + Send + 'static) -> XenStore<UnixStream> {
    let (a, mut b) = UnixStream::pair().unwrap();
    thread::spawn(move || {
        if let Some((h, _)) = recv(&mut b) {
            reply(&mut b, h.req_id);
        }
        // Keep the socket open until the client is done.
        let mut sink = Vec::new();
        let _ = b.read_to_end(&mut sink);
    });
    let mut xs = XenStore::new(a);
    xs.set_reply_timeout(Duration::from_millis(300));
    xs
}

#[test]
fn hostile_daemon_frames() {
    // Payload longer than XENSTORE_PAYLOAD_MAX: rejected, connection broken.
    let mut xs = hostile(|s, id| {
        let h = XsdSockmsg {
            r#type: 2,
            req_id: id,
            tx_id: 0,
            len: 1 << 30,
        };
        s.write_all(h.as_bytes()).unwrap();
    });
    assert_eq!(
        xs.read("/x"),
        Err(XsError::Wire(WireError::TooLong(1 << 30)))
    );
    assert_eq!(xs.read("/x"), Err(XsError::Broken));

    let mut xs = hostile(|s, id| send(s, 999, id, b""));
    assert_eq!(
        xs.read("/x"),
        Err(XsError::Wire(WireError::UnknownType(999)))
    );

    let mut xs = hostile(|s, id| send(s, 2, id.wrapping_add(1), b"v"));
    assert!(matches!(xs.read("/x"), Err(XsError::UnexpectedReply(_))));

    let mut xs = hostile(|s, id| send(s, MsgType::Write as u32, id, b"OK\0"));
    assert!(matches!(xs.read("/x"), Err(XsError::UnexpectedReply(_))));

    let mut xs = hostile(|s, id| send(s, MsgType::Error as u32, id, b"EWHAT\0"));
    assert_eq!(xs.read("/x"), Err(XsError::Daemon(XsErrno::Unknown)));

    let mut xs = hostile(|s, id| send(s, MsgType::Error as u32, id, b"EACCES\0"));
    assert_eq!(xs.read("/x"), Err(XsError::Daemon(XsErrno::EACCES)));
    assert!(xs.read("/x").is_err());

    // Malformed watch event (no token): a framing error.
    let mut xs = hostile(|s, _| send(s, MsgType::WatchEvent as u32, 0, b"/only-path"));
    assert_eq!(xs.read("/x"), Err(XsError::Wire(WireError::Malformed)));

    // A header cut short, then EOF.
    let (a, mut b) = UnixStream::pair().unwrap();
    thread::spawn(move || {
        recv(&mut b);
        b.write_all(&[1, 2, 3]).unwrap();
    });
    let mut xs = XenStore::new(a);
    assert_eq!(xs.read("/x"), Err(XsError::Closed));

    // No reply at all.
    let mut xs = hostile(|_, _| {});
    assert_eq!(xs.read("/x"), Err(XsError::Timeout));
    assert_eq!(xs.read("/x"), Err(XsError::Broken));

    // A directory with a non-UTF-8 name, and a bad transaction id.
    let mut xs = hostile(|s, id| send(s, MsgType::Directory as u32, id, b"ok\0\xff\0"));
    assert_eq!(xs.children("/x"), Err(XsError::Value(ValueError::NotUtf8)));
    let mut xs = hostile(|s, id| send(s, MsgType::TransactionStart as u32, id, b"zz\0"));
    assert_eq!(
        xs.transaction().map(drop),
        Err(XsError::Value(ValueError::NotANumber))
    );
    let mut xs = hostile(|s, id| send(s, MsgType::GetPerms as u32, id, b"q1\0"));
    assert_eq!(
        xs.perms("/x"),
        Err(XsError::Value(ValueError::BadPermission))
    );
}

/// `/dev/xen/xenbus` in front of the fake daemon: each `write(2)` is one
/// whole message, and, like Linux's `xenbus_file_write`, a watch the
/// daemon would refuse is answered by the `write` itself failing (the
/// kernel registers the watch synchronously and returns xenstored's
/// error as the errno; the message is consumed, the stream stays in step).
/// Here: the domain's watch quota (`quota-nb-watch-per-domain`) and a path
/// with a character xenstored refuses.
#[derive(Debug)]
struct FakeXenbus {
    sock: UnixStream,
    watches: usize,
    quota: usize,
}

impl Read for FakeXenbus {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.sock.read(buf)
    }
}

impl Write for FakeXenbus {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let h: XsdSockmsg = zerocopy::FromBytes::read_from_bytes(&buf[..16]).unwrap();
        assert_eq!(
            buf.len(),
            16 + h.len as usize,
            "one whole message per write"
        );
        if h.r#type == MsgType::Watch as u32 {
            let path = split_strings(&buf[16..]).next().unwrap_or_default();
            if path.contains(&b'!') {
                return Err(std::io::Error::from_raw_os_error(22)); // EINVAL
            }
            if self.watches == self.quota {
                return Err(std::io::Error::from_raw_os_error(7)); // E2BIG
            }
            self.watches += 1;
        }
        self.sock.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl std::os::fd::AsFd for FakeXenbus {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

fn xenbus_client(quota: usize) -> XenStore<FakeXenbus> {
    XenStore::xenbus(FakeXenbus {
        sock: FakeXenstored::new().connect_socket(0),
        watches: 0,
        quota,
    })
}

/// Issue 17, finding 12: over `/dev/xen/xenbus` a refused watch is the
/// `write(2)` error. It is that request's error (the same `Daemon` error
/// dom0's socket gives), and the connection goes on.
#[test]
fn xenbus_refused_watch_fails_that_request_alone() {
    let mut xs = xenbus_client(3);
    xs.write("/domid", b"7").unwrap();
    for j in 0..3 {
        xs.watch(&format!("/data/x/w{j}"), "t").unwrap();
    }
    assert_eq!(
        xs.watch("/data/x/w3", "t"),
        Err(XsError::Daemon(XsErrno::E2BIG))
    );
    assert_eq!(xs.read("/domid").unwrap(), b"7");
    let mut xs = xenbus_client(3);
    assert_eq!(
        xs.watch("data/bad!path", "t"),
        Err(XsError::Daemon(XsErrno::EINVAL))
    );
    xs.write("/k", b"v").unwrap();
    assert_eq!(xs.read("/k").unwrap(), b"v");
    // The events of the watches set before still arrive.
    xs.watch("/k", "k").unwrap();
    let ev = xs
        .wait_watch(Some(Duration::from_secs(20)))
        .unwrap()
        .unwrap();
    assert_eq!((ev.path, ev.token), (&b"/k"[..], &b"k"[..]));
}

/// Over a socket a write error is the connection's: nothing is known of
/// what the daemon received.
#[test]
fn socket_write_error_breaks_the_connection() {
    let (a, b) = UnixStream::pair().unwrap();
    drop(b);
    let mut xs = XenStore::new(a);
    assert!(matches!(
        xs.read("/x"),
        Err(XsError::Io(_) | XsError::Closed)
    ));
    assert_eq!(xs.read("/x"), Err(XsError::Broken));
}
