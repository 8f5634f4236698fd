//! Who the peer is, and whom we accept as one.
//!
//! The kernel tells each end of a connected Unix socket who holds the other end
//! (`SO_PEERCRED`): the credentials of the process that called `connect(2)` (seen by
//! the listening side) or `listen(2)` (seen by the connecting side), as they were at
//! that moment. Nothing the peer sends can change them. Both sides of the rendezvous
//! check them against a [`CredPolicy`] *before* any descriptor moves: the offerer
//! before it sends the region, the acceptor before it reads the hello (descriptors
//! still queued in the socket are released unread when it closes).
//!
//! The default policy admits the same effective user only. Containers whose processes
//! run under other user ids (a bind-mounted registry shared by several) name them in
//! an allow-list: [`CredPolicy::allow_uid`], [`CredPolicy::allow_gid`]. In a user
//! namespace the kernel reports ids as seen from the reader's namespace (an unmapped id
//! reads as the overflow id 65534), so the allow-list names ids as this process sees
//! them.

use core::fmt;
use std::os::fd::{AsRawFd, BorrowedFd};

use crate::error::SysError;

/// The peer's credentials, from `SO_PEERCRED`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerCred {
    /// The peer's process id as seen from our pid namespace; 0 if it lives in a
    /// namespace we cannot see (a process on the host talking to us in a container).
    pub pid: i32,
    /// The peer's effective user id.
    pub uid: u32,
    /// The peer's effective group id.
    pub gid: u32,
}

impl fmt::Display for PeerCred {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {} uid {} gid {}", self.pid, self.uid, self.gid)
    }
}

impl PeerCred {
    /// Reads `SO_PEERCRED` of a connected Unix socket.
    ///
    /// # Errors
    ///
    /// [`SysError`] if `getsockopt` fails (not a Unix socket, not connected).
    pub fn of(sock: BorrowedFd<'_>) -> Result<Self, SysError> {
        // `rustix::net::sockopt::socket_peercred` exists, but its `UCred::pid` is a
        // `NonZero` `Pid`: the kernel reports pid 0 for a peer in a pid namespace we
        // cannot see, which would be an invalid value there. So this one call goes
        // through `libc`.
        let mut cred = libc::ucred {
            pid: 0,
            uid: 0,
            gid: 0,
        };
        let mut len = core::mem::size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY:
        // - `sock` is a valid, open descriptor for the duration of the call (borrowed);
        // - `cred` is a valid, writable `ucred` and `len` holds its exact size, so the
        //   kernel writes at most that many bytes into it;
        // - `len` is a valid, writable `socklen_t`.
        let rc = unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&raw mut cred).cast(),
                &raw mut len,
            )
        };
        if rc != 0 {
            return Err(SysError::from_io(
                "getsockopt(SO_PEERCRED)",
                &std::io::Error::last_os_error(),
            ));
        }
        Ok(Self {
            pid: cred.pid,
            uid: cred.uid,
            gid: cred.gid,
        })
    }
}

/// Whom we accept as a peer: the same effective user by default, plus an allow-list.
///
/// The same policy decides which directories may hold our sockets (see
/// [`SecureDir`](crate::SecureDir)): a directory owned by an allowed user, writable by
/// nobody else.
///
/// # Examples
///
/// ```
/// use coresident_shm::{CredPolicy, PeerCred};
///
/// let me = rustix::process::geteuid().as_raw();
/// let policy = CredPolicy::same_user().allow_uid(1001);
/// assert!(policy.allows(&PeerCred { pid: 1, uid: me, gid: 0 }));
/// assert!(policy.allows(&PeerCred { pid: 1, uid: 1001, gid: 5 }));
/// assert!(!policy.allows(&PeerCred { pid: 1, uid: 1002, gid: 5 }));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredPolicy {
    /// Allowed effective user ids (ours first).
    uids: Vec<u32>,
    /// Allowed effective group ids.
    gids: Vec<u32>,
    /// No check at all (see [`CredPolicy::anyone`]).
    anyone: bool,
}

impl Default for CredPolicy {
    fn default() -> Self {
        Self::same_user()
    }
}

impl CredPolicy {
    /// Admits peers running as our own effective user id.
    #[must_use]
    pub fn same_user() -> Self {
        Self {
            uids: vec![rustix::process::geteuid().as_raw()],
            gids: Vec::new(),
            anyone: false,
        }
    }

    /// Also admits peers running as `uid` (for instance a container's mapped user).
    #[must_use]
    pub fn allow_uid(mut self, uid: u32) -> Self {
        if !self.uids.contains(&uid) {
            self.uids.push(uid);
        }
        self
    }

    /// Also admits peers whose effective group is `gid`, and lets a directory shared
    /// through that group (mode `0770`, group `gid`) hold the sockets.
    #[must_use]
    pub fn allow_gid(mut self, gid: u32) -> Self {
        if !self.gids.contains(&gid) {
            self.gids.push(gid);
        }
        self
    }

    /// Admits any peer. Only for set-ups where another access control already decides
    /// who reaches the socket (a socket pair made by a trusted parent, a network
    /// namespace of one's own); never for a directory several users share.
    #[must_use]
    pub fn anyone() -> Self {
        Self {
            uids: Vec::new(),
            gids: Vec::new(),
            anyone: true,
        }
    }

    /// Whether `cred` may be our peer.
    #[must_use]
    pub fn allows(&self, cred: &PeerCred) -> bool {
        self.anyone || self.uids.contains(&cred.uid) || self.gids.contains(&cred.gid)
    }

    /// Whether a directory owned by `uid` may hold our sockets: ours, root's (root can
    /// read our memory anyway), or an allowed user's.
    #[must_use]
    pub(crate) fn trusts_owner(&self, uid: u32) -> bool {
        uid == 0 || rustix::process::geteuid().as_raw() == uid || self.uids.contains(&uid)
    }

    /// Whether a directory's group `gid` may have access to it.
    #[must_use]
    pub(crate) fn trusts_group(&self, gid: u32) -> bool {
        self.gids.contains(&gid)
    }

    /// The mode our socket files get: owner only, or owner and group when groups are
    /// allowed (the directory then belongs to an allowed group).
    #[must_use]
    pub(crate) fn socket_mode(&self) -> u32 {
        if self.gids.is_empty() {
            0o600
        } else {
            0o660
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_rules() {
        let me = rustix::process::geteuid().as_raw();
        let p = CredPolicy::default();
        assert!(p.allows(&PeerCred {
            pid: 0,
            uid: me,
            gid: 12345
        }));
        assert!(!p.allows(&PeerCred {
            pid: 0,
            uid: me.wrapping_add(1),
            gid: 0
        }));
        let g = CredPolicy::same_user().allow_gid(777);
        assert!(g.allows(&PeerCred {
            pid: 0,
            uid: me.wrapping_add(1),
            gid: 777
        }));
        assert_eq!(g.socket_mode(), 0o660);
        assert_eq!(p.socket_mode(), 0o600);
        assert!(CredPolicy::anyone().allows(&PeerCred {
            pid: 0,
            uid: 4242,
            gid: 4242
        }));
        assert!(p.trusts_owner(0) && p.trusts_owner(me));
    }

    #[test]
    fn socket_pair_credentials_are_ours() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let c = PeerCred::of(std::os::fd::AsFd::as_fd(&a)).unwrap();
        assert_eq!(c.pid, std::process::id() as i32);
        assert_eq!(c.uid, rustix::process::geteuid().as_raw());
    }
}
