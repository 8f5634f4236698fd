//! The key schema's names and places: a checked [`Name`], a bounded
//! [`Path`], the offer's and the answer's directories, and the permissions
//! every node of them gets.

use super::*;

/// Whether `name` is a channel name or context: `[A-Za-z0-9_-]{1,64}`.
///
/// # Examples
///
/// ```
/// use coresident_xen::protocol::keys::valid_name;
///
/// assert!(valid_name("tcp-0a000001-1f90"));
/// assert!(!valid_name("a/b") && !valid_name("") && !valid_name("a.b"));
/// ```
pub fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A checked channel name or context (`[A-Za-z0-9_-]{1,64}`), kept without
/// allocation. A caller that names channels after something else (a
/// connection's addresses and ports, say) spells it in this alphabet:
/// `tcp-0a000001-1f90-0a000002-c350`.
///
/// # Examples
///
/// ```
/// use coresident_xen::protocol::keys::{KeyError, Name};
///
/// let n = Name::new("logs")?;
/// assert_eq!(n.as_str(), "logs");
/// assert_eq!(Name::new("a/b"), Err(KeyError::BadName));
/// # Ok::<(), KeyError>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Name {
    buf: [u8; MAX_NAME_LEN],
    /// `1 ..= MAX_NAME_LEN`.
    len: usize,
}

impl Name {
    /// Checks `name`.
    ///
    /// # Errors
    ///
    /// [`KeyError::BadName`] outside `[A-Za-z0-9_-]{1,64}`.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::protocol::keys::{KeyError, Name};
    ///
    /// assert_eq!(Name::new("logs")?.as_str(), "logs");
    /// assert_eq!(Name::new("../x"), Err(KeyError::BadName));
    /// # Ok::<(), KeyError>(())
    /// ```
    pub fn new(name: &str) -> Result<Self, KeyError> {
        if !valid_name(name) {
            return Err(KeyError::BadName);
        }
        let mut buf = [0; MAX_NAME_LEN];
        buf.get_mut(..name.len())
            .ok_or(KeyError::BadName)?
            .copy_from_slice(name.as_bytes());
        Ok(Self {
            buf,
            len: name.len(),
        })
    }

    /// The name.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::protocol::keys::Name;
    ///
    /// assert_eq!(Name::new("pv")?.as_str(), "pv");
    /// # Ok::<(), coresident_xen::protocol::keys::KeyError>(())
    /// ```
    pub fn as_str(&self) -> &str {
        // Checked ASCII at construction.
        core::str::from_utf8(self.buf.get(..self.len).unwrap_or(&[])).unwrap_or("")
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The permissions of every node of an offer or answer: owned by its
/// writer, no access for other domains, read for the peer.
///
/// # Examples
///
/// ```
/// use coresident_xen::protocol::keys::perms;
/// use coresident_xen::protocol::xs_wire::{Access, Perm};
///
/// // Domain 5's offer to dom0: `[n5, r0]`.
/// assert_eq!(perms(5, 0), [Perm { domid: 5, access: Access::None }, Perm { domid: 0, access: Access::Read }]);
/// ```
pub fn perms(owner: DomId, reader: DomId) -> [Perm; 2] {
    [
        Perm {
            domid: owner,
            access: Access::None,
        },
        Perm {
            domid: reader,
            access: Access::Read,
        },
    ]
}

/// The offer's directory,
/// `/local/domain/OFFERER/data/coresident/CONTEXT/ACCEPTOR/NAME/offer`.
///
/// # Examples
///
/// ```
/// use coresident_xen::protocol::keys::{offer_dir, Name, CHANNELS};
///
/// let p = offer_dir(0, 5, &Name::new(CHANNELS)?, &Name::new("pv")?)?;
/// assert_eq!(p.as_str(), "/local/domain/0/data/coresident/channels/5/pv/offer");
/// # Ok::<(), coresident_xen::protocol::keys::KeyError>(())
/// ```
///
/// # Errors
///
/// [`KeyError::PathTooLong`] (never, for names within their limit).
pub fn offer_dir(
    offerer: DomId,
    acceptor: DomId,
    context: &Name,
    name: &Name,
) -> Result<Path, KeyError> {
    Path::new(format_args!(
        "/local/domain/{offerer}/{TOP}/{context}/{acceptor}/{name}/offer"
    ))
}

/// The answer's directory,
/// `/local/domain/ACCEPTOR/data/coresident/CONTEXT/OFFERER/NAME/answer`.
///
/// # Errors
///
/// [`KeyError::PathTooLong`] (never, for names within their limit).
///
/// # Examples
///
/// ```
/// use coresident_xen::protocol::keys::{answer_dir, Name, CHANNELS};
///
/// let p = answer_dir(5, 0, &Name::new(CHANNELS)?, &Name::new("pv")?)?;
/// assert_eq!(p.as_str(), "/local/domain/5/data/coresident/channels/0/pv/answer");
/// # Ok::<(), coresident_xen::protocol::keys::KeyError>(())
/// ```
pub fn answer_dir(
    acceptor: DomId,
    offerer: DomId,
    context: &Name,
    name: &Name,
) -> Result<Path, KeyError> {
    Path::new(format_args!(
        "/local/domain/{acceptor}/{TOP}/{context}/{offerer}/{name}/answer"
    ))
}

/// Where `peer`'s offers to `own` in `context` live: the directory whose
/// children are the offered names
/// (`/local/domain/PEER/data/coresident/CONTEXT/OWN`).
///
/// # Errors
///
/// [`KeyError::PathTooLong`] (never, for a context within its limit).
///
/// # Examples
///
/// ```
/// use coresident_xen::protocol::keys::{offers_from, Name};
///
/// // Domain 5's offers to dom0 in "conns": one child per offered name.
/// let dir = offers_from(5, 0, &Name::new("conns")?)?;
/// assert_eq!(dir.as_str(), "/local/domain/5/data/coresident/conns/0");
/// # Ok::<(), coresident_xen::protocol::keys::KeyError>(())
/// ```
pub fn offers_from(peer: DomId, own: DomId, context: &Name) -> Result<Path, KeyError> {
    Path::new(format_args!("/local/domain/{peer}/{TOP}/{context}/{own}"))
}

/// A XenStore path (or short text) built on the stack.
///
/// # Examples
///
/// ```
/// use coresident_xen::protocol::keys::Path;
///
/// let p = Path::new(format_args!("/local/domain/{}/data", 3))?;
/// assert_eq!(p.as_str(), "/local/domain/3/data");
/// # Ok::<(), coresident_xen::protocol::keys::KeyError>(())
/// ```
#[derive(Clone)]
pub struct Path {
    buf: [u8; PATH_MAX],
    len: usize,
}

/// The longest [`Path`]: the longest answer key of the longest names fits.
///
/// # Examples
///
/// ```
/// use coresident_xen::protocol::keys::{answer_dir, Name, MAX_NAME_LEN, PATH_MAX};
///
/// // The longest answer directory of the longest names fits, with room for a key.
/// let long = Name::new(&"n".repeat(MAX_NAME_LEN))?;
/// let dir = answer_dir(65535, 65535, &long, &long)?;
/// assert!(dir.as_str().len() + "/offer-port".len() <= PATH_MAX);
/// # Ok::<(), coresident_xen::protocol::keys::KeyError>(())
/// ```
pub const PATH_MAX: usize = 256;

impl fmt::Debug for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Write for Path {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len.checked_add(s.len()).ok_or(fmt::Error)?;
        self.buf
            .get_mut(self.len..end)
            .ok_or(fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

impl Path {
    /// An empty path.
    ///
    /// # Examples
    ///
    /// ```
    /// use core::fmt::Write;
    /// use coresident_xen::protocol::keys::Path;
    ///
    /// let mut p = Path::empty();
    /// write!(p, "refs{}", 3)?;
    /// assert_eq!(p.as_str(), "refs3");
    /// # Ok::<(), core::fmt::Error>(())
    /// ```
    pub const fn empty() -> Self {
        Self {
            buf: [0; PATH_MAX],
            len: 0,
        }
    }

    /// The path of `args`.
    ///
    /// # Errors
    ///
    /// [`KeyError::PathTooLong`] past [`PATH_MAX`] bytes.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::protocol::keys::{KeyError, Path, PATH_MAX};
    ///
    /// let p = Path::new(format_args!("{}/{}", "data", "app"))?;
    /// assert_eq!(p.as_str(), "data/app");
    /// let long = "x".repeat(PATH_MAX + 1);
    /// assert_eq!(Path::new(format_args!("{long}")).err(), Some(KeyError::PathTooLong));
    /// # Ok::<(), KeyError>(())
    /// ```
    pub fn new(args: fmt::Arguments<'_>) -> Result<Self, KeyError> {
        let mut p = Self::empty();
        p.write_fmt(args).map_err(|_| KeyError::PathTooLong)?;
        Ok(p)
    }

    /// The path (UTF-8: only `str`s were written).
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::protocol::keys::Path;
    ///
    /// let p = Path::new(format_args!("/local/domain/{}/name", 5))?;
    /// assert_eq!(p.as_str(), "/local/domain/5/name");
    /// # Ok::<(), coresident_xen::protocol::keys::KeyError>(())
    /// ```
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(self.buf.get(..self.len).unwrap_or(&[])).unwrap_or("")
    }
}
