//! What the residency agent reports: each live domain's [`Status`], the
//! [`Change`]s it saw or made (for the daemon to log), and its one
//! connection-level failure, [`AgentError`].

use core::fmt;

use super::addr::{Addr, Addresses, AdvertError};
use crate::types::DomId;
use crate::xenstore::XsError;

/// What the agent knows of one live domain.
///
/// # Examples
///
/// ```no_run
/// use coresident_xen::residency::{Agent, Status};
/// use coresident_xen::XenStore;
///
/// let mut agent = Agent::new(XenStore::open()?)?;
/// agent.run_once()?;
/// for (domid, status) in agent.domains() {
///     if let Status::Rejected(why) = status {
///         eprintln!("domain {domid} is in no list: {why}");
///     }
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Status {
    /// No advertisement (or it was removed).
    Silent,
    /// A valid advertisement with these addresses.
    Advertising(Addresses),
    /// An advertisement that was refused; the domain is in no list.
    Rejected(AdvertError),
}

/// One thing the agent saw or did, for the daemon to report.
///
/// # Examples
///
/// ```
/// use coresident_xen::residency::{AdvertError, Change};
///
/// let c = Change::Rejected { domid: 7, error: AdvertError::MissingVersion };
/// assert_eq!(
///     c.to_string(),
///     "domain 7's advertisement refused: the first line is not `coresident VERSION`"
/// );
/// assert_eq!(Change::Gone(7).to_string(), "domain 7 is gone");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// A new live domain (not yet advertising).
    Appeared(DomId),
    /// The domain advertises, or changed its addresses.
    Advertised {
        /// The domain (the owner of the path, as XenStore says).
        domid: DomId,
        /// What it advertises.
        addrs: Addresses,
    },
    /// The domain removed its advertisement.
    Silenced(DomId),
    /// The domain's advertisement was refused: it is in no list.
    Rejected {
        /// The domain.
        domid: DomId,
        /// Why.
        error: AdvertError,
    },
    /// The domain is gone (destroyed, or migrated away).
    Gone(DomId),
    /// [`Agent::withdraw`](super::Agent::withdraw) took the domain out of every list.
    Withdrawn(DomId),
    /// [`Agent::readmit`](super::Agent::readmit) put it back.
    Readmitted(DomId),
    /// Several domains claim one address: it is left out of every list
    /// (traffic to it takes the network, which is always correct).
    Conflict {
        /// The address.
        addr: Addr,
        /// Who claims it.
        domains: Vec<DomId>,
    },
    /// A domain's list of peers was written.
    ListWritten {
        /// Whose list.
        domid: DomId,
        /// Its new generation.
        generation: u64,
        /// The peers in it.
        peers: Vec<DomId>,
    },
    /// Writing a domain's list failed; retried at the next change.
    ListFailed {
        /// Whose list.
        domid: DomId,
        /// The XenStore error.
        error: XsError,
    },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Appeared(d) => write!(f, "domain {d} appeared"),
            Self::Advertised { domid, addrs } => {
                write!(f, "domain {domid} advertises")?;
                if addrs.is_empty() {
                    f.write_str(" (no addresses)")?;
                }
                for a in addrs.iter() {
                    write!(f, " {a}")?;
                }
                Ok(())
            }
            Self::Silenced(d) => write!(f, "domain {d} stopped advertising"),
            Self::Rejected { domid, error } => {
                write!(f, "domain {domid}'s advertisement refused: {error}")
            }
            Self::Gone(d) => write!(f, "domain {d} is gone"),
            Self::Withdrawn(d) => write!(f, "domain {d} withdrawn from every list"),
            Self::Readmitted(d) => write!(f, "domain {d} readmitted"),
            Self::Conflict { addr, domains } => {
                write!(f, "address {addr} claimed by domains {domains:?}: left out")
            }
            Self::ListWritten {
                domid,
                generation,
                peers,
            } => write!(
                f,
                "list of domain {domid} generation {generation}: peers {peers:?}"
            ),
            Self::ListFailed { domid, error } => {
                write!(f, "writing the list of domain {domid} failed: {error}")
            }
        }
    }
}

/// A failure of the agent's XenStore connection (per-domain failures are
/// [`Change`]s instead).
///
/// # Examples
///
/// ```
/// use coresident_xen::residency::AgentError;
/// use coresident_xen::XsError;
///
/// let e = AgentError::from(XsError::NotFound);
/// assert_eq!(e.0, XsError::NotFound);
/// assert!(e.to_string().starts_with("residency agent: "));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentError(pub XsError);

impl fmt::Display for AgentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "residency agent: {}", self.0)
    }
}

impl std::error::Error for AgentError {}

impl From<XsError> for AgentError {
    fn from(e: XsError) -> Self {
        Self(e)
    }
}
