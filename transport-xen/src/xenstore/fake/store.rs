//! The one fake xenstored of the crate's tests (the XenStore client's, the
//! rendezvous's, the residency agent's) over sockets: one connection per
//! domain over `UnixStream::pair()`, each request answered by the shared
//! [`Engine`] (permissions, watches, transactions as xenstored has them),
//! what it sends delivered by each connection's writer thread.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use zerocopy::IntoBytes;

use super::engine::{Engine, Out};
use crate::protocol::xs_wire::{Perm, XsdSockmsg};
use crate::types::DomId;
use crate::xenstore::XenStore;

struct State {
    engine: Engine,
    /// To each connection's writer thread, by the engine's index: the
    /// daemon never blocks on a client that does not read (xenstored
    /// queues, too).
    outs: Vec<Sender<Vec<u8>>>,
}

impl State {
    fn deliver(&self, out: Vec<Out>) {
        for (conn, h, body) in out {
            let mut m = h.as_bytes().to_vec();
            m.extend_from_slice(&body);
            // A client that went away is not the daemon's problem.
            if let Some(s) = self.outs.get(conn) {
                let _ = s.send(m);
            }
        }
    }
}

/// The fake daemon; clone it freely (the state is shared).
#[derive(Clone)]
pub(crate) struct FakeXenstored(Arc<Mutex<State>>);

fn recv(s: &mut UnixStream) -> Option<(XsdSockmsg, Vec<u8>)> {
    let mut h = [0u8; 16];
    s.read_exact(&mut h).ok()?;
    let h: XsdSockmsg = zerocopy::FromBytes::read_from_bytes(&h[..]).ok()?;
    let mut body = vec![0; h.len as usize];
    s.read_exact(&mut body).ok()?;
    Some((h, body))
}

impl FakeXenstored {
    pub(crate) fn new() -> Self {
        Self(Arc::new(Mutex::new(State {
            engine: Engine::new(),
            outs: Vec::new(),
        })))
    }

    /// Runs `f` on the engine and delivers what it sends.
    fn with(&self, f: impl FnOnce(&mut Engine) -> Vec<Out>) {
        let mut st = self.0.lock().unwrap();
        let out = f(&mut st.engine);
        st.deliver(out);
    }

    /// A client connected as domain `domid`.
    pub(crate) fn connect(&self, domid: DomId) -> XenStore<UnixStream> {
        let mut xs = XenStore::new(self.connect_socket(domid));
        xs.set_reply_timeout(Duration::from_secs(20));
        xs
    }

    /// The client's end of a connection as domain `domid` (to wrap in
    /// another transport, as `/dev/xen/xenbus` is).
    pub(crate) fn connect_socket(&self, domid: DomId) -> UnixStream {
        let (a, b) = UnixStream::pair().unwrap();
        let mut sock = b.try_clone().unwrap();
        let (out, rx) = channel::<Vec<u8>>();
        thread::spawn(move || {
            for m in rx {
                if sock.write_all(&m).is_err() {
                    break;
                }
            }
        });
        let idx = {
            let mut st = self.0.lock().unwrap();
            st.outs.push(out);
            let idx = st.engine.connect(domid);
            assert_eq!(idx + 1, st.outs.len());
            idx
        };
        let me = self.clone();
        thread::spawn(move || {
            let mut b = b;
            while let Some((h, body)) = recv(&mut b) {
                me.with(|e| e.request(idx, &h, &body));
            }
            me.0.lock().unwrap().engine.disconnect(idx);
        });
        a
    }

    /// See [`Engine::introduce`].
    pub(crate) fn introduce(&self, domid: DomId) {
        self.with(|e| e.introduce(domid));
    }

    /// See [`Engine::destroy`].
    pub(crate) fn destroy(&self, domid: DomId) {
        self.with(|e| e.destroy(domid));
    }

    /// See [`Engine::restore`].
    pub(crate) fn restore(&self, old: DomId, new: DomId) {
        self.with(|e| e.restore(old, new));
    }

    /// See [`Engine::remove_home`].
    pub(crate) fn remove_home(&self, domid: DomId) {
        self.with(|e| e.remove_home(domid));
    }

    /// Writes a node as domain `as_dom` would (perms as on create), without
    /// a client: for tests that play a hostile writer.
    pub(crate) fn poke(&self, as_dom: DomId, path: &str, value: &[u8]) {
        self.with(|e| e.poke(as_dom, path, value).expect("poke"));
    }

    /// Every node at or below `prefix`, sorted.
    pub(crate) fn nodes_under(&self, prefix: &str) -> Vec<String> {
        let below = format!("{prefix}/");
        let st = self.0.lock().unwrap();
        st.engine
            .nodes()
            .keys()
            .filter(|k| *k == prefix || k.starts_with(&below))
            .cloned()
            .collect()
    }

    /// A node's value and perms.
    pub(crate) fn peek(&self, path: &str) -> Option<(Vec<u8>, Vec<Perm>)> {
        self.0.lock().unwrap().engine.nodes().get(path).cloned()
    }
}
