//! The request engine of the tests' xenstored, free of sockets and
//! threads: the node map with its permissions (owner, per-domain entries,
//! inheritance on create, unprivileged creators own what they create), the
//! access checks, watches with the special `@introduceDomain` and
//! `@releaseDomain` paths and their events, optimistic transactions (a
//! snapshot; commit fails with `EAGAIN` if anything changed meanwhile), and
//! what the toolstack does to domains (introduce, destroy, restore).
//! Events of a watch set with a relative path name the path relative to
//! the watcher's home, as xenstored's do.
//!
//! Each call hands back what the daemon sends, in order, as [`Out`]: the
//! watch events of a change, then the reply (as xenstored queues the
//! events before it replies). The transport around it (the socket daemon
//! of `store.rs`) only delivers them.
extern crate std;

use std::borrow::ToOwned;
use std::collections::BTreeMap;
use std::format;
use std::string::{String, ToString};
use std::vec;
use std::vec::Vec;

use crate::protocol::xs_wire::{split_strings, Access, MsgType, Perm, XsdSockmsg};
use crate::types::DomId;

/// Every node: its value and its permissions (owner first).
pub(crate) type Nodes = BTreeMap<String, (Vec<u8>, Vec<Perm>)>;

/// One message the daemon sends: to connection `.0`, header and body.
pub(crate) type Out = (usize, XsdSockmsg, Vec<u8>);

struct Conn {
    domid: DomId,
    watches: Vec<(String, String)>,
    /// The watches set with a relative path (as given, and the token):
    /// resolved again against the new home after a restore.
    relative: Vec<(String, String)>,
    /// Open transaction: id, the snapshot it works on, the store version it
    /// started from, and the paths it changed.
    tx: Option<(u32, Nodes, u64, Vec<String>)>,
}

impl Conn {
    /// The path an event of watch (`w`, `tok`) for a change of `path`
    /// names: relative to the home for a watch set with a relative path,
    /// as xenstored does (the client sees the path it registered).
    fn shown<'p>(&self, w: &str, tok: &str, path: &'p str) -> &'p str {
        let home = format!("/local/domain/{}/", self.domid);
        let relative = self
            .relative
            .iter()
            .any(|(r, t)| t == tok && w.strip_prefix(&home) == Some(r.as_str()));
        match path.strip_prefix(&home) {
            Some(rest) if relative => rest,
            _ => path,
        }
    }
}

/// The daemon's state: nodes, connections (by index), transactions.
pub(crate) struct Engine {
    nodes: Nodes,
    /// Bumped by every change of the live store (what a commit checks).
    version: u64,
    conns: Vec<Conn>,
    next_tx: u32,
}

fn msg(conn: usize, ty: u32, req_id: u32, tx_id: u32, body: &[u8]) -> Out {
    let h = XsdSockmsg {
        r#type: ty,
        req_id,
        tx_id,
        len: body.len() as u32,
    };
    (conn, h, body.to_vec())
}

fn event(conn: usize, body: &str) -> Out {
    msg(conn, MsgType::WatchEvent as u32, 0, 0, body.as_bytes())
}

fn parent(path: &str) -> Option<&str> {
    match path.rfind('/') {
        Some(0) if path.len() > 1 => Some("/"),
        Some(i) if i > 0 => Some(&path[..i]),
        _ => None,
    }
}

/// `path` as domain `dom` means it: absolute (or a special `@` path) as
/// given, else relative to the domain's home, as xenstored resolves it.
pub(crate) fn resolve(dom: DomId, path: &str) -> String {
    if path.starts_with('/') || path.starts_with('@') {
        path.to_owned()
    } else {
        format!("/local/domain/{dom}/{path}")
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

fn rm(nodes: &mut Nodes, path: &str) {
    nodes.remove(path);
    let prefix = format!("{path}/");
    nodes.retain(|k, _| !k.starts_with(&prefix));
}

/// Creates or updates `path` (and missing parents) as `dom`; `None` for
/// mkdir. False if `dom` may not.
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
    if !nodes.contains_key(par) && !write(nodes, dom, par, None) {
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
        if let Some(owner) = perms.first_mut() {
            owner.domid = dom;
        }
    }
    nodes.insert(path.into(), (value.unwrap_or_default().to_vec(), perms));
    true
}

impl Engine {
    /// `/`, `/local` and `/local/domain`, dom0's.
    pub(crate) fn new() -> Self {
        let mut nodes = Nodes::new();
        for p in ["/", "/local", "/local/domain"] {
            nodes.insert(p.into(), (vec![], vec![perm(0, Access::None)]));
        }
        Self {
            nodes,
            version: 0,
            conns: Vec::new(),
            next_tx: 1,
        }
    }

    /// A new connection as domain `domid`: its index.
    pub(crate) fn connect(&mut self, domid: DomId) -> usize {
        self.conns.push(Conn {
            domid,
            watches: vec![],
            relative: vec![],
            tx: None,
        });
        self.conns.len() - 1
    }

    /// Connection `conn` went away: its watches go with it.
    pub(crate) fn disconnect(&mut self, conn: usize) {
        if let Some(c) = self.conns.get_mut(conn) {
            c.watches.clear();
        }
    }

    /// What the toolstack does to create a domain: `/local/domain/N`
    /// (owner dom0, read for N), `data` (owned by N), `domid`, `name`
    /// (`domN`); then `@introduceDomain`.
    pub(crate) fn introduce(&mut self, domid: DomId) -> Vec<Out> {
        let home = format!("/local/domain/{domid}");
        let ro = vec![perm(0, Access::None), perm(domid, Access::Read)];
        self.nodes.insert(home.clone(), (vec![], ro.clone()));
        self.nodes.insert(
            format!("{home}/domid"),
            (domid.to_string().into_bytes(), ro.clone()),
        );
        self.nodes.insert(
            format!("{home}/name"),
            (format!("dom{domid}").into_bytes(), ro),
        );
        self.nodes.insert(
            format!("{home}/data"),
            (vec![], vec![perm(domid, Access::None)]),
        );
        self.version += 1;
        let mut out = Vec::new();
        self.fire(&mut out, "@introduceDomain", false);
        out
    }

    /// What happens when a domain dies: `@releaseDomain`, then the
    /// toolstack removes its home. Its connections stay open (a real
    /// guest's would be gone with it; the tests simply stop using them).
    pub(crate) fn destroy(&mut self, domid: DomId) -> Vec<Out> {
        let mut out = Vec::new();
        self.fire(&mut out, "@releaseDomain", false);
        out.extend(self.remove_home(domid));
        out
    }

    /// `xl save` then `xl restore`: domain `old` goes (`@releaseDomain`,
    /// its home removed), the same guest comes back as domain `new` (a new
    /// home, `@introduceDomain`), and its open connections, now `new`'s,
    /// have every watch set again (relative paths resolved against the new
    /// home) and fired once, as Linux does on resume.
    pub(crate) fn restore(&mut self, old: DomId, new: DomId) -> Vec<Out> {
        let mut out = self.destroy(old);
        out.extend(self.introduce(new));
        let old_home = format!("/local/domain/{old}/");
        let new_home = format!("/local/domain/{new}/");
        for (i, c) in self.conns.iter_mut().enumerate() {
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
                out.push(event(i, &format!("{}\0{t}\0", c.shown(p, t, p))));
            }
        }
        out
    }

    /// What the toolstack does before Xen reports the death: removes the
    /// domain's home (no `@releaseDomain` yet).
    pub(crate) fn remove_home(&mut self, domid: DomId) -> Vec<Out> {
        let home = format!("/local/domain/{domid}");
        rm(&mut self.nodes, &home);
        self.version += 1;
        let mut out = Vec::new();
        self.fire(&mut out, &home, true);
        out
    }

    /// Writes a node as domain `as_dom` would (perms as on create), without
    /// a client; `None` if `as_dom` may not.
    pub(crate) fn poke(&mut self, as_dom: DomId, path: &str, value: &[u8]) -> Option<Vec<Out>> {
        if !write(&mut self.nodes, as_dom, path, Some(value)) {
            return None;
        }
        self.version += 1;
        let mut out = Vec::new();
        self.fire(&mut out, path, false);
        Some(out)
    }

    /// How many watches connection `conn` has set.
    pub(crate) fn watches(&self, conn: usize) -> usize {
        self.conns.get(conn).map_or(0, |c| c.watches.len())
    }

    /// The live store's nodes.
    pub(crate) fn nodes(&self) -> &Nodes {
        &self.nodes
    }

    /// Queues watch events for a change of `path` to every watcher of it or
    /// of an ancestor (and, for `removed`, of a descendant).
    fn fire(&self, out: &mut Vec<Out>, path: &str, removed: bool) {
        for (i, c) in self.conns.iter().enumerate() {
            for (w, tok) in &c.watches {
                let hit = path == w
                    || path.starts_with(&format!("{w}/"))
                    || (removed && w.starts_with(&format!("{path}/")));
                // Events only for nodes the watcher could read (or gone).
                let readable = path.starts_with('@')
                    || self
                        .nodes
                        .get(path)
                        .is_none_or(|(_, p)| access(p, c.domid).0);
                if hit && readable {
                    let shown = if removed && w.len() > path.len() {
                        w
                    } else {
                        path
                    };
                    out.push(event(i, &format!("{}\0{tok}\0", c.shown(w, tok, shown))));
                }
            }
        }
    }

    /// Handles one request of connection `conn`: what the daemon sends
    /// for it, in order (watch events of the change, then the reply).
    pub(crate) fn request(&mut self, conn: usize, h: &XsdSockmsg, body: &[u8]) -> Vec<Out> {
        let mut out = Vec::new();
        let Some(dom) = self.conns.get(conn).map(|c| c.domid) else {
            return out;
        };
        let err = |e: &str| {
            msg(
                conn,
                MsgType::Error as u32,
                h.req_id,
                h.tx_id,
                format!("{e}\0").as_bytes(),
            )
        };
        let Some(ty) = MsgType::from_u32(h.r#type) else {
            out.push(err("ENOSYS"));
            return out;
        };
        let parts: Vec<String> = split_strings(body)
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect();
        let raw = parts.first().map_or("", String::as_str);
        let path = resolve(dom, raw);
        // The node map this request works on: the transaction's snapshot or
        // the live store.
        let in_tx = h.tx_id != 0;
        if in_tx && self.conns[conn].tx.as_ref().is_none_or(|t| t.0 != h.tx_id) {
            out.push(err("EINVAL"));
            return out;
        }
        let ok = |body: &[u8]| msg(conn, h.r#type, h.req_id, h.tx_id, body);
        let mut changed: Option<(String, bool)> = None;
        let reply = {
            let Self {
                nodes: live, conns, ..
            } = self;
            let nodes = match conns[conn].tx.as_mut() {
                Some(t) if in_tx => &mut t.1,
                _ => live,
            };
            match ty {
                MsgType::Read => match nodes.get(&path) {
                    Some((v, p)) if access(p, dom).0 => ok(v),
                    Some(_) => err("EACCES"),
                    None => err("ENOENT"),
                },
                MsgType::Write | MsgType::Mkdir => {
                    let value = (ty == MsgType::Write).then(|| {
                        let nul = body.iter().position(|&b| b == 0).unwrap_or(body.len());
                        body.get(nul + 1..).unwrap_or_default()
                    });
                    if write(nodes, dom, &path, value) {
                        changed = Some((path.clone(), false));
                        ok(b"OK\0")
                    } else {
                        err("EACCES")
                    }
                }
                MsgType::Rm => match nodes.get(&path) {
                    None => err("ENOENT"),
                    Some((_, p)) if !access(p, dom).1 => err("EACCES"),
                    Some(_) => {
                        rm(nodes, &path);
                        changed = Some((path.clone(), true));
                        ok(b"OK\0")
                    }
                },
                MsgType::Directory => match nodes.get(&path) {
                    None => err("ENOENT"),
                    Some((_, p)) if !access(p, dom).0 => err("EACCES"),
                    Some(_) => {
                        let prefix = if path == "/" {
                            "/".to_owned()
                        } else {
                            format!("{path}/")
                        };
                        let mut names = Vec::new();
                        for k in nodes.keys() {
                            if let Some(rest) = k.strip_prefix(&prefix) {
                                if !rest.is_empty() && !rest.contains('/') {
                                    names.extend_from_slice(rest.as_bytes());
                                    names.push(0);
                                }
                            }
                        }
                        ok(&names)
                    }
                },
                MsgType::GetPerms => match nodes.get(&path) {
                    None => err("ENOENT"),
                    Some((_, p)) if !access(p, dom).0 => err("EACCES"),
                    Some((_, p)) => {
                        let mut enc = Vec::new();
                        let mut buf = [0u8; 6];
                        for q in p {
                            enc.extend_from_slice(q.encode(&mut buf));
                            enc.push(0);
                        }
                        ok(&enc)
                    }
                },
                MsgType::SetPerms => {
                    let perms: Option<Vec<Perm>> = parts
                        .iter()
                        .skip(1)
                        .map(|s| Perm::parse(s.as_bytes()).ok())
                        .collect();
                    match (nodes.get_mut(&path), perms) {
                        (None, _) => err("ENOENT"),
                        (_, None) => err("EINVAL"),
                        (Some((_, p)), Some(new)) => {
                            if dom != 0 && p.first().is_none_or(|o| o.domid != dom) {
                                err("EACCES")
                            } else if new.is_empty() {
                                err("EINVAL")
                            } else {
                                *p = new;
                                changed = Some((path.clone(), false));
                                ok(b"OK\0")
                            }
                        }
                    }
                }
                MsgType::Watch => {
                    let tok = parts.get(1).cloned().unwrap_or_default();
                    let c = &mut conns[conn];
                    c.watches.push((path.clone(), tok.clone()));
                    if !raw.starts_with('/') && !raw.starts_with('@') {
                        c.relative.push((raw.to_owned(), tok.clone()));
                    }
                    // The reply, then the watch's first event.
                    out.push(ok(b"OK\0"));
                    out.push(event(conn, &format!("{raw}\0{tok}\0")));
                    return out;
                }
                MsgType::Unwatch => {
                    let tok = parts.get(1).cloned().unwrap_or_default();
                    let w = &mut conns[conn].watches;
                    let before = w.len();
                    w.retain(|(p, t)| !(p == &path && t == &tok));
                    let gone = w.len() < before;
                    if gone && !raw.starts_with('/') && !raw.starts_with('@') {
                        conns[conn]
                            .relative
                            .retain(|(r, t)| !(r == raw && t == &tok));
                    }
                    if gone {
                        ok(b"OK\0")
                    } else {
                        err("ENOENT")
                    }
                }
                MsgType::TransactionStart => {
                    let id = self.next_tx;
                    self.next_tx += 1;
                    let snap = (id, self.nodes.clone(), self.version, vec![]);
                    self.conns[conn].tx = Some(snap);
                    ok(format!("{id}\0").as_bytes())
                }
                MsgType::TransactionEnd => {
                    let Some((_, snap, ver, paths)) = self.conns[conn].tx.take() else {
                        out.push(err("EINVAL"));
                        return out;
                    };
                    if parts.first().map(String::as_str) == Some("T") {
                        if self.version != ver {
                            out.push(err("EAGAIN"));
                            return out;
                        }
                        if !paths.is_empty() {
                            self.nodes = snap;
                            self.version += 1;
                        }
                        for p in paths {
                            self.fire(&mut out, &p, false);
                        }
                    }
                    ok(b"OK\0")
                }
                MsgType::GetDomainPath => ok(format!("/local/domain/{raw}\0").as_bytes()),
                _ => err("ENOSYS"),
            }
        };
        if let Some((p, removed)) = changed {
            if in_tx {
                if let Some(t) = self.conns[conn].tx.as_mut() {
                    t.3.push(p);
                }
            } else {
                self.version += 1;
                self.fire(&mut out, &p, removed);
            }
        }
        out.push(reply);
        out
    }
}
