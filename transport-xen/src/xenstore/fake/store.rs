//! The one fake xenstored of the crate's tests (the XenStore client's, the
//! rendezvous's, the residency agent's): one connection per domain over
//! `UnixStream::pair()`, permissions enforced as xenstored does
//! (owner, per-domain entries, inheritance on create, unprivileged creators
//! own what they create), watches with the special `@introduceDomain` and
//! `@releaseDomain` paths, and optimistic transactions (a snapshot; commit
//! fails with `EAGAIN` if anything changed meanwhile).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use zerocopy::IntoBytes;

use crate::protocol::xs_wire::{split_strings, Access, MsgType, Perm, XsdSockmsg};
use crate::types::DomId;
use crate::xenstore::XenStore;

type Nodes = BTreeMap<String, (Vec<u8>, Vec<Perm>)>;

struct Conn {
    domid: DomId,
    /// To the connection's writer thread: the daemon never blocks on a
    /// client that does not read (xenstored queues, too).
    out: Sender<Vec<u8>>,
    watches: Vec<(String, String)>,
    /// The watches set with a relative path (as given, and the token):
    /// resolved again against the new home after a restore.
    relative: Vec<(String, String)>,
    /// Open transaction: id, the snapshot it works on, the store version it
    /// started from, and the paths it changed.
    tx: Option<(u32, Nodes, u64, Vec<String>)>,
}

#[derive(Default)]
struct State {
    nodes: Nodes,
    version: u64,
    conns: Vec<Conn>,
    next_tx: u32,
}

/// The fake daemon; clone it freely (the state is shared).
#[derive(Clone)]
pub(crate) struct FakeXenstored(Arc<Mutex<State>>);

fn send(s: &mut Sender<Vec<u8>>, ty: u32, req_id: u32, tx_id: u32, body: &[u8]) {
    let h = XsdSockmsg {
        r#type: ty,
        req_id,
        tx_id,
        len: body.len() as u32,
    };
    let mut m = h.as_bytes().to_vec();
    m.extend_from_slice(body);
    // A client that went away is not the daemon's problem.
    let _ = s.send(m);
}

fn recv(s: &mut UnixStream) -> Option<(XsdSockmsg, Vec<u8>)> {
    let mut h = [0u8; 16];
    s.read_exact(&mut h).ok()?;
    let h: XsdSockmsg = zerocopy::FromBytes::read_from_bytes(&h[..]).ok()?;
    let mut body = vec![0; h.len as usize];
    s.read_exact(&mut body).ok()?;
    Some((h, body))
}

fn parent(path: &str) -> Option<&str> {
    match path.rfind('/') {
        Some(0) if path.len() > 1 => Some("/"),
        Some(i) if i > 0 => Some(&path[..i]),
        _ => None,
    }
}

fn perm(domid: DomId, access: Access) -> Perm {
    Perm { domid, access }
}

/// What `dom` may do with a node of `perms`: (read, write).
fn access(perms: &[Perm], dom: DomId) -> (bool, bool) {
    if dom == 0 || perms.first().is_some_and(|p| p.domid == dom) {
        return (true, true);
    }
    let a = perms
        .iter()
        .skip(1)
        .find(|p| p.domid == dom)
        .or(perms.first())
        .map_or(Access::None, |p| p.access);
    (
        matches!(a, Access::Read | Access::Both),
        matches!(a, Access::Write | Access::Both),
    )
}

impl FakeXenstored {
    pub(crate) fn new() -> Self {
        let mut st = State {
            next_tx: 1,
            ..State::default()
        };
        for p in ["/", "/local", "/local/domain"] {
            st.nodes
                .insert(p.into(), (vec![], vec![perm(0, Access::None)]));
        }
        Self(Arc::new(Mutex::new(st)))
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
            st.conns.push(Conn {
                domid,
                out,
                watches: vec![],
                relative: vec![],
                tx: None,
            });
            st.conns.len() - 1
        };
        let me = self.clone();
        thread::spawn(move || {
            let mut b = b;
            while let Some((h, body)) = recv(&mut b) {
                me.handle(idx, &h, &body);
            }
            me.0.lock().unwrap().conns[idx].watches.clear();
        });
        a
    }

    /// What the toolstack does to create a domain: `/local/domain/N`
    /// (owner dom0, read for N), `data` (owned by N), `domid`, `name`
    /// (`domN`); then `@introduceDomain`.
    pub(crate) fn introduce(&self, domid: DomId) {
        let mut st = self.0.lock().unwrap();
        let home = format!("/local/domain/{domid}");
        let ro = vec![perm(0, Access::None), perm(domid, Access::Read)];
        st.nodes.insert(home.clone(), (vec![], ro.clone()));
        st.nodes.insert(
            format!("{home}/domid"),
            (domid.to_string().into_bytes(), ro.clone()),
        );
        st.nodes.insert(
            format!("{home}/name"),
            (format!("dom{domid}").into_bytes(), ro),
        );
        st.nodes.insert(
            format!("{home}/data"),
            (vec![], vec![perm(domid, Access::None)]),
        );
        st.version += 1;
        Self::fire(&mut st, "@introduceDomain", None);
    }

    /// What happens when a domain dies: `@releaseDomain`, then the
    /// toolstack removes its home.
    pub(crate) fn destroy(&self, domid: DomId) {
        let mut st = self.0.lock().unwrap();
        Self::fire(&mut st, "@releaseDomain", None);
        let home = format!("/local/domain/{domid}");
        Self::rm(&mut st.nodes, &home);
        st.version += 1;
        Self::fire(&mut st, &home, Some(()));
        // Its clients' connections stay open (a real guest's would be
        // gone with it; the tests simply stop using them).
    }

    /// `xl save` then `xl restore`: domain `old` goes (`@releaseDomain`,
    /// its home removed), the same guest comes back as domain `new` (a new
    /// home, `@introduceDomain`), and its open connections, now `new`'s,
    /// have every watch set again (relative paths resolved against the new
    /// home) and fired once, as Linux does on resume.
    pub(crate) fn restore(&self, old: DomId, new: DomId) {
        self.destroy(old);
        self.introduce(new);
        let mut st = self.0.lock().unwrap();
        let old_home = format!("/local/domain/{old}/");
        let new_home = format!("/local/domain/{new}/");
        let mut events = Vec::new();
        for (i, c) in st.conns.iter_mut().enumerate() {
            if c.domid != old {
                continue;
            }
            c.domid = new;
            for (rel, tok) in &c.relative {
                let was = format!("{old_home}{rel}");
                if let Some(w) = c.watches.iter_mut().find(|(p, t)| *p == was && t == tok) {
                    w.0 = format!("{new_home}{rel}");
                }
            }
            for (p, t) in &c.watches {
                events.push((i, format!("{p}\0{t}\0")));
            }
        }
        for (i, ev) in events {
            send(
                &mut st.conns[i].out,
                MsgType::WatchEvent as u32,
                0,
                0,
                ev.as_bytes(),
            );
        }
    }

    /// What the toolstack does before Xen reports the death: removes the
    /// domain's home (no `@releaseDomain` yet).
    pub(crate) fn remove_home(&self, domid: DomId) {
        let mut st = self.0.lock().unwrap();
        let home = format!("/local/domain/{domid}");
        Self::rm(&mut st.nodes, &home);
        st.version += 1;
        Self::fire(&mut st, &home, Some(()));
    }

    /// Writes a node as domain `as_dom` would (perms as on create), without
    /// a client: for tests that play a hostile writer.
    pub(crate) fn poke(&self, as_dom: DomId, path: &str, value: &[u8]) {
        let mut st = self.0.lock().unwrap();
        let State { nodes, .. } = &mut *st;
        assert!(Self::write(nodes, as_dom, path, Some(value)), "poke {path}");
        st.version += 1;
        Self::fire(&mut st, path, None);
    }

    /// Every node at or below `prefix`, sorted.
    pub(crate) fn nodes_under(&self, prefix: &str) -> Vec<String> {
        let below = format!("{prefix}/");
        let st = self.0.lock().unwrap();
        st.nodes
            .keys()
            .filter(|k| *k == prefix || k.starts_with(&below))
            .cloned()
            .collect()
    }

    /// A node's value and perms.
    pub(crate) fn peek(&self, path: &str) -> Option<(Vec<u8>, Vec<Perm>)> {
        self.0.lock().unwrap().nodes.get(path).cloned()
    }

    fn rm(nodes: &mut Nodes, path: &str) {
        nodes.remove(path);
        let prefix = format!("{path}/");
        nodes.retain(|k, _| !k.starts_with(&prefix));
    }

    /// Creates or updates `path` (and missing parents) as `dom`; `None`
    /// for mkdir. False if `dom` may not.
    fn write(nodes: &mut Nodes, dom: DomId, path: &str, value: Option<&[u8]>) -> bool {
        if let Some((v, p)) = nodes.get_mut(path) {
            if !access(p, dom).1 {
                return false;
            }
            if let Some(value) = value {
                *v = value.to_vec();
            }
            return true;
        }
        let Some(par) = parent(path) else {
            return false;
        };
        if !nodes.contains_key(par) && !Self::write(nodes, dom, par, None) {
            return false;
        }
        let Some((_, pp)) = nodes.get(par) else {
            return false;
        };
        if !access(pp, dom).1 {
            return false;
        }
        let mut perms = pp.clone();
        if dom != 0 {
            perms[0].domid = dom;
        }
        nodes.insert(path.into(), (value.unwrap_or_default().to_vec(), perms));
        true
    }

    /// Sends watch events for a change of `path` to every watcher of it or
    /// of an ancestor (and, for `removed`, of a descendant).
    fn fire(st: &mut State, path: &str, removed: Option<()>) {
        let State { conns, nodes, .. } = st;
        for c in conns.iter_mut() {
            for (w, tok) in &c.watches {
                let hit = path == w
                    || path.starts_with(&format!("{w}/"))
                    || (removed.is_some() && w.starts_with(&format!("{path}/")));
                // Events only for nodes the watcher could read (or gone).
                let readable = path.starts_with('@')
                    || nodes.get(path).is_none_or(|(_, p)| access(p, c.domid).0);
                if hit && readable {
                    let ev = format!(
                        "{}\0{tok}\0",
                        if removed.is_some() && w.len() > path.len() {
                            w
                        } else {
                            path
                        }
                    );
                    send(&mut c.out, MsgType::WatchEvent as u32, 0, 0, ev.as_bytes());
                }
            }
        }
    }

    fn send_err(st: &mut State, idx: usize, h: &XsdSockmsg, e: &str) {
        let body = format!("{e}\0");
        send(
            &mut st.conns[idx].out,
            MsgType::Error as u32,
            h.req_id,
            h.tx_id,
            body.as_bytes(),
        );
    }

    fn handle(&self, idx: usize, h: &XsdSockmsg, body: &[u8]) {
        let mut st = self.0.lock().unwrap();
        let dom = st.conns[idx].domid;
        let parts: Vec<String> = split_strings(body)
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect();
        let abs = |p: &str| {
            if p.starts_with('/') || p.starts_with('@') {
                p.to_string()
            } else {
                format!("/local/domain/{dom}/{p}")
            }
        };
        let path = abs(parts.first().map_or("", String::as_str));
        // Replies wait in `resp` until the watch events of the change are
        // out: a client whose write returned knows every watcher has its
        // event (as the real daemon queues them before replying).
        let resp: std::cell::RefCell<Option<(u32, Vec<u8>)>> = std::cell::RefCell::new(None);
        let reply = |_: &mut State, ty: u32, body: &[u8]| {
            *resp.borrow_mut() = Some((ty, body.to_vec()));
        };
        let err =
            |st: &mut State, e: &str| reply(st, MsgType::Error as u32, format!("{e}\0").as_bytes());
        let Some(ty) = MsgType::from_u32(h.r#type) else {
            return Self::send_err(&mut st, idx, h, "ENOSYS");
        };
        // The node map this request works on: the transaction's snapshot or
        // the live store.
        let in_tx = h.tx_id != 0;
        if in_tx && st.conns[idx].tx.as_ref().is_none_or(|t| t.0 != h.tx_id) {
            return Self::send_err(&mut st, idx, h, "EINVAL");
        }
        macro_rules! nodes {
            ($st:expr) => {
                if in_tx {
                    &mut $st.conns[idx].tx.as_mut().unwrap().1
                } else {
                    &mut $st.nodes
                }
            };
        }
        let mut changed: Option<(String, bool)> = None;
        match ty {
            MsgType::Read => match nodes!(st).get(&path).cloned() {
                Some((v, p)) if access(&p, dom).0 => reply(&mut st, h.r#type, &v),
                Some(_) => err(&mut st, "EACCES"),
                None => err(&mut st, "ENOENT"),
            },
            MsgType::Write | MsgType::Mkdir => {
                let value = if ty == MsgType::Write {
                    let nul = body.iter().position(|&b| b == 0).unwrap_or(body.len());
                    Some(body.get(nul + 1..).unwrap_or_default().to_vec())
                } else {
                    None
                };
                if Self::write(nodes!(st), dom, &path, value.as_deref()) {
                    changed = Some((path.clone(), false));
                    reply(&mut st, h.r#type, b"OK\0");
                } else {
                    err(&mut st, "EACCES");
                }
            }
            MsgType::Rm => match nodes!(st).get(&path).cloned() {
                None => err(&mut st, "ENOENT"),
                Some((_, p)) if !access(&p, dom).1 => err(&mut st, "EACCES"),
                Some(_) => {
                    Self::rm(nodes!(st), &path);
                    changed = Some((path.clone(), true));
                    reply(&mut st, h.r#type, b"OK\0");
                }
            },
            MsgType::Directory => match nodes!(st).get(&path).cloned() {
                None => err(&mut st, "ENOENT"),
                Some((_, p)) if !access(&p, dom).0 => err(&mut st, "EACCES"),
                Some(_) => {
                    let prefix = if path == "/" {
                        "/".to_string()
                    } else {
                        format!("{path}/")
                    };
                    let mut out = Vec::new();
                    for k in nodes!(st).keys() {
                        if let Some(rest) = k.strip_prefix(&prefix) {
                            if !rest.is_empty() && !rest.contains('/') {
                                out.extend_from_slice(rest.as_bytes());
                                out.push(0);
                            }
                        }
                    }
                    reply(&mut st, h.r#type, &out);
                }
            },
            MsgType::GetPerms => match nodes!(st).get(&path).cloned() {
                None => err(&mut st, "ENOENT"),
                Some((_, p)) if !access(&p, dom).0 => err(&mut st, "EACCES"),
                Some((_, p)) => {
                    let mut out = Vec::new();
                    let mut buf = [0u8; 6];
                    for q in &p {
                        out.extend_from_slice(q.encode(&mut buf));
                        out.push(0);
                    }
                    reply(&mut st, h.r#type, &out);
                }
            },
            MsgType::SetPerms => {
                let perms: Option<Vec<Perm>> = parts[1..]
                    .iter()
                    .map(|s| Perm::parse(s.as_bytes()).ok())
                    .collect();
                match (nodes!(st).get_mut(&path), perms) {
                    (None, _) => err(&mut st, "ENOENT"),
                    (_, None) => err(&mut st, "EINVAL"),
                    (Some((_, p)), Some(new)) => {
                        if dom != 0 && p[0].domid != dom {
                            err(&mut st, "EACCES");
                        } else if new.is_empty() {
                            err(&mut st, "EINVAL");
                        } else {
                            *p = new;
                            changed = Some((path.clone(), false));
                            reply(&mut st, h.r#type, b"OK\0");
                        }
                    }
                }
            }
            MsgType::Watch => {
                let tok = parts.get(1).cloned().unwrap_or_default();
                st.conns[idx].watches.push((path.clone(), tok.clone()));
                let raw = parts.first().cloned().unwrap_or_default();
                if !raw.starts_with('/') && !raw.starts_with('@') {
                    st.conns[idx].relative.push((raw, tok.clone()));
                }
                // The reply, then the watch's first event.
                send(&mut st.conns[idx].out, h.r#type, h.req_id, h.tx_id, b"OK\0");
                let ev = format!("{path}\0{tok}\0");
                send(
                    &mut st.conns[idx].out,
                    MsgType::WatchEvent as u32,
                    0,
                    0,
                    ev.as_bytes(),
                );
            }
            MsgType::Unwatch => {
                let tok = parts.get(1).cloned().unwrap_or_default();
                let before = st.conns[idx].watches.len();
                st.conns[idx]
                    .watches
                    .retain(|(p, t)| !(p == &path && t == &tok));
                if st.conns[idx].watches.len() == before {
                    err(&mut st, "ENOENT");
                } else {
                    reply(&mut st, h.r#type, b"OK\0");
                }
            }
            MsgType::TransactionStart => {
                let id = st.next_tx;
                st.next_tx += 1;
                let snap = (id, st.nodes.clone(), st.version, vec![]);
                st.conns[idx].tx = Some(snap);
                reply(&mut st, h.r#type, format!("{id}\0").as_bytes());
            }
            MsgType::TransactionEnd => {
                let Some((_, snap, ver, paths)) = st.conns[idx].tx.take() else {
                    return Self::send_err(&mut st, idx, h, "EINVAL");
                };
                if parts.first().map(String::as_str) == Some("T") {
                    if st.version != ver {
                        return Self::send_err(&mut st, idx, h, "EAGAIN");
                    }
                    if !paths.is_empty() {
                        st.nodes = snap;
                        st.version += 1;
                    }
                    for p in paths {
                        Self::fire(&mut st, &p, None);
                    }
                    reply(&mut st, h.r#type, b"OK\0");
                } else {
                    reply(&mut st, h.r#type, b"OK\0");
                }
            }
            MsgType::GetDomainPath => reply(
                &mut st,
                h.r#type,
                format!("/local/domain/{}\0", parts[0]).as_bytes(),
            ),
            _ => err(&mut st, "ENOSYS"),
        }
        if let Some((p, removed)) = changed {
            if in_tx {
                if let Some(t) = st.conns[idx].tx.as_mut() {
                    t.3.push(p);
                }
            } else {
                st.version += 1;
                Self::fire(&mut st, &p, removed.then_some(()));
            }
        }
        if let Some((ty, body)) = resp.take() {
            send(&mut st.conns[idx].out, ty, h.req_id, h.tx_id, &body);
        }
    }
}
