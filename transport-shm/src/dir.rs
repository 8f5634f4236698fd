//! The directory that holds our sockets, opened once and verified on every use.
//!
//! Whoever can connect to a rendezvous socket is offered the region, and whoever can
//! create a file in the directory can squat a peer's name. So the directory is opened
//! once, without following a symlink at its last component (`O_NOFOLLOW |
//! O_DIRECTORY`), and every later operation goes through that descriptor rather than
//! through the path: `/proc/self/fd/<dirfd>/<name>` for `bind(2)` and `connect(2)`
//! (which take paths only), `*at(2)` calls for the rest. Renaming or replacing the
//! path afterwards changes nothing for us. Where `/proc` is not mounted the path is
//! used, after checking it still names the same directory (a narrow race then
//! remains; said in [`SecureDir::uses_proc`]).
//!
//! The rules, checked at open and again before each use (`fstat` of the descriptor):
//!
//! 1. a directory, not a symlink;
//! 2. owned by us, by root, or by a user the [`CredPolicy`] allows;
//! 3. no permission at all for others (`mode & 0o007 == 0`), and group permissions
//!    only if the directory's group is one the policy allows (`mode & 0o070 == 0`
//!    otherwise): a directory created here is `0700`.
//!
//! A world-writable directory (`/tmp`, mode `1777`) fails rule 3: there, another user
//! could register a peer's name first, or take a one-shot offer.

use core::fmt;
use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::cred::CredPolicy;
use crate::error::{SysContext, SysError};

/// A socket directory failed its checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DirError {
    /// The path's last component is a symlink, or not a directory.
    NotADirectory,
    /// The directory belongs to a user the policy does not trust.
    Owner {
        /// The owner's uid.
        uid: u32,
    },
    /// Others, or a group the policy does not allow, have access to the directory.
    Mode {
        /// The directory's permission bits.
        mode: u32,
    },
    /// A system call failed (`open`, `fstat`, `mkdir`...).
    Sys(SysError),
}

impl fmt::Display for DirError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotADirectory => {
                f.write_str("socket directory is a symlink or not a directory")
            }
            Self::Owner { uid } => write!(
                f,
                "socket directory belongs to uid {uid}, which the credential policy does not trust"
            ),
            Self::Mode { mode } => write!(
                f,
                "socket directory mode {mode:04o} lets others in (want 0700, or 0770 with an allowed group)"
            ),
            Self::Sys(e) => write!(f, "socket directory: {e}"),
        }
    }
}

impl std::error::Error for DirError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Sys(e) => Some(e),
            _ => None,
        }
    }
}

impl From<SysError> for DirError {
    fn from(e: SysError) -> Self {
        Self::Sys(e)
    }
}

/// The identity of a directory entry: `(st_dev, st_ino, st_ctime sec, nsec)`. A socket
/// re-created under the same name gets a new inode (on tmpfs, always a new number; a
/// disk file system may reuse a number, and then the change time tells them apart at
/// its granularity).
pub(crate) type EntryIdent = (u64, u64, i64, i64);

/// A verified socket directory (see the module docs).
#[derive(Debug)]
pub struct SecureDir {
    /// The directory, opened `O_RDONLY | O_DIRECTORY | O_NOFOLLOW`.
    fd: OwnedFd,
    /// The path it was opened by (for messages and the fallback without `/proc`).
    path: PathBuf,
    /// Who may own it and share it.
    policy: CredPolicy,
    /// Whether `/proc/self/fd/<fd>` names this directory.
    proc: bool,
}

impl SecureDir {
    /// Opens `path`, creating it (and missing parents) with mode `0700` if it does not
    /// exist, and verifies it.
    ///
    /// # Errors
    ///
    /// A [`DirError`] naming the rule that failed.
    pub fn create(path: impl Into<PathBuf>, policy: &CredPolicy) -> Result<Self, DirError> {
        let path = path.into();
        match std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&path)
        {
            Ok(()) => {}
            Err(e) => return Err(SysError::from_io("mkdir", &e).into()),
        }
        Self::open(path, policy)
    }

    /// Opens an existing directory and verifies it.
    ///
    /// # Errors
    ///
    /// A [`DirError`] naming the rule that failed.
    pub fn open(path: impl Into<PathBuf>, policy: &CredPolicy) -> Result<Self, DirError> {
        let path = path.into();
        let fd = match rustix::fs::open(
            &path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::NOTDIR | Errno::LOOP) => return Err(DirError::NotADirectory),
            Err(e) => return Err(SysError::new("open(socket directory)", e).into()),
        };
        let proc = {
            let ours = rustix::fs::fstat(&fd).sys("fstat")?;
            rustix::fs::stat(format!("/proc/self/fd/{}", fd.as_raw_fd()).as_str())
                .is_ok_and(|s| (s.st_dev, s.st_ino) == (ours.st_dev, ours.st_ino))
        };
        let dir = Self {
            fd,
            path,
            policy: policy.clone(),
            proc,
        };
        dir.verify()?;
        Ok(dir)
    }

    /// Checks the rules again (the owner may have changed the mode since).
    ///
    /// # Errors
    ///
    /// A [`DirError`] naming the rule that failed.
    pub fn verify(&self) -> Result<(), DirError> {
        let st = rustix::fs::fstat(&self.fd).sys("fstat(socket directory)")?;
        if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
            return Err(DirError::NotADirectory);
        }
        if !self.policy.trusts_owner(st.st_uid) {
            return Err(DirError::Owner { uid: st.st_uid });
        }
        let mode = st.st_mode & 0o7777;
        let group_ok = mode & 0o070 == 0 || self.policy.trusts_group(st.st_gid);
        if mode & 0o007 != 0 || !group_ok {
            return Err(DirError::Mode { mode });
        }
        if !self.proc {
            // No /proc: the path is what bind/connect will resolve; it must still name
            // this directory.
            let by_path = rustix::fs::lstat(&self.path).sys("lstat(socket directory)")?;
            if (by_path.st_dev, by_path.st_ino) != (st.st_dev, st.st_ino) {
                return Err(DirError::NotADirectory);
            }
        }
        Ok(())
    }

    /// The path the directory was opened by.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The credential policy it was verified against.
    #[must_use]
    pub fn policy(&self) -> &CredPolicy {
        &self.policy
    }

    /// Whether socket paths go through `/proc/self/fd` (immune to the directory's path
    /// being replaced); `false` where `/proc` is not mounted, where a replacement
    /// between our check and the kernel's resolution remains possible.
    #[must_use]
    pub fn uses_proc(&self) -> bool {
        self.proc
    }

    /// The path to give `bind(2)` or `connect(2)` for the entry `name`.
    #[must_use]
    pub fn socket_path(&self, name: &str) -> PathBuf {
        if self.proc {
            PathBuf::from(format!("/proc/self/fd/{}/{name}", self.fd.as_raw_fd()))
        } else {
            self.path.join(name)
        }
    }

    /// The path of the directory itself, resolved through our descriptor where
    /// `/proc` allows (for `inotify_add_watch`).
    #[must_use]
    pub(crate) fn own_path(&self) -> PathBuf {
        if self.proc {
            PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
        } else {
            self.path.clone()
        }
    }

    /// The path of `name` for people: the directory's path joined with it.
    #[must_use]
    pub fn display_path(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// The identity of the socket `name`, or `None` if there is no socket by that name.
    pub(crate) fn socket_ident(&self, name: &str) -> Option<EntryIdent> {
        let st = rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW).ok()?;
        (FileType::from_raw_mode(st.st_mode) == FileType::Socket).then_some((
            st.st_dev,
            st.st_ino,
            st.st_ctime,
            st.st_ctime_nsec as i64,
        ))
    }

    /// Whether any entry (of any type) is called `name`.
    pub(crate) fn exists(&self, name: &str) -> bool {
        rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW).is_ok()
    }

    /// Removes the entry `name` (not a directory).
    pub(crate) fn unlink(&self, name: &str) -> Result<(), Errno> {
        rustix::fs::unlinkat(&self.fd, name, AtFlags::empty())
    }

    /// Sets the permission bits of `name`.
    pub(crate) fn chmod(&self, name: &str, mode: u32) -> Result<(), SysError> {
        rustix::fs::chmodat(&self.fd, name, Mode::from_raw_mode(mode), AtFlags::empty())
            .sys("chmod(socket)")
    }

    /// Renames `from` to `to` unless `to` exists (`RENAME_NOREPLACE`).
    pub(crate) fn rename_noreplace(&self, from: &str, to: &str) -> Result<(), Errno> {
        rustix::fs::renameat_with(
            &self.fd,
            from,
            &self.fd,
            to,
            rustix::fs::RenameFlags::NOREPLACE,
        )
    }

    /// The names of the entries, without `.` and `..`.
    pub(crate) fn names(&self) -> Result<Vec<String>, SysError> {
        let mut dir = rustix::fs::Dir::read_from(&self.fd).sys("opendir")?;
        let mut out = Vec::new();
        while let Some(entry) = dir.read() {
            let entry = entry.sys("readdir")?;
            let name = OsString::from_vec(entry.file_name().to_bytes().to_vec());
            if let Ok(name) = name.into_string() {
                if name != "." && name != ".." {
                    out.push(name);
                }
            }
        }
        Ok(out)
    }
}

impl AsFd for SecureDir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// An unpredictable file name: `prefix` and 16 random hex digits (`getrandom`), so
/// that nobody can guess a one-shot socket's name or prepare a file under it.
pub(crate) fn random_name(prefix: &str) -> Result<String, SysError> {
    let mut bytes = [0u8; 8];
    let mut filled = 0;
    while filled < bytes.len() {
        match rustix::rand::getrandom(&mut bytes[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(SysError::new("getrandom", e)),
        }
    }
    Ok(format!("{prefix}{:016x}", u64::from_le_bytes(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn fresh(name: &str, mode: u32) -> PathBuf {
        let d = std::env::temp_dir().join(format!("secure-dir-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode)).unwrap();
        d
    }

    #[test]
    fn rules() {
        let p = CredPolicy::same_user();
        let ok = fresh("ok", 0o700);
        let d = SecureDir::open(&ok, &p).unwrap();
        assert!(d.uses_proc());
        assert!(d.socket_path("x").starts_with("/proc/self/fd"));
        for mode in [0o1777, 0o755, 0o770, 0o701] {
            let bad = fresh(&format!("m{mode:o}"), mode);
            assert_eq!(
                SecureDir::open(&bad, &p).unwrap_err(),
                DirError::Mode { mode },
                "{mode:o}"
            );
            std::fs::remove_dir(&bad).unwrap();
        }
        let gid = rustix::process::getegid().as_raw();
        let grp = fresh("grp", 0o770);
        assert!(SecureDir::open(&grp, &p.clone().allow_gid(gid)).is_ok());
        // A symlink to a good directory is refused at its last component.
        let link = ok.with_extension("link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&ok, &link).unwrap();
        assert_eq!(
            SecureDir::open(&link, &p).unwrap_err(),
            DirError::NotADirectory
        );
        // A mode change after opening is seen by the next use.
        std::fs::set_permissions(&ok, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(d.verify().unwrap_err(), DirError::Mode { mode: 0o777 });
        for p in [&ok, &grp] {
            let _ = std::fs::remove_dir_all(p);
        }
        let _ = std::fs::remove_file(&link);
    }

    #[test]
    fn random_names_differ() {
        let a = random_name(".offer-").unwrap();
        let b = random_name(".offer-").unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), ".offer-".len() + 16);
    }
}
