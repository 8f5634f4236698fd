//! The key schema's names and places: a checked [`Name`], a bounded
//! [`Path`], the offer's and the answer's directories, and the permissions
//! every node of them gets.

use super::*;

/// Whether `name` is a channel name or context: `[A-Za-z0-9_-]{1,64}`.
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
    pub fn new(args: fmt::Arguments<'_>) -> Result<Self, KeyError> {
        let mut p = Self::empty();
        p.write_fmt(args).map_err(|_| KeyError::PathTooLong)?;
        Ok(p)
    }

    /// The path (UTF-8: only `str`s were written).
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(self.buf.get(..self.len).unwrap_or(&[])).unwrap_or("")
    }
}
