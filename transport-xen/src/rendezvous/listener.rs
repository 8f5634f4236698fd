//! [`Listener`]: every offer a peer makes to this domain in one context.

use crate::protocol::keys::{self, KeyError, Name, Path};
use crate::types::DomId;
use crate::xenstore::{XsClient, XsError};

/// The offers a peer makes to this domain in one context, under any name:
/// what an acceptor that serves whoever comes watches (a connection's
/// channels named after its addresses, say).
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use coresident_xen::rendezvous::Listener;
/// use coresident_xen::{Rendezvous, XenStore};
///
/// let mut xs = XenStore::open()?;
/// let listener = Listener::new(0, 5, "channels")?;
/// listener.listen(&mut xs)?;
/// let mut names = Vec::new();
/// listener.offered(&mut xs, |name| names.push(name.to_string()))?;
/// for name in names {
///     let link = Rendezvous::new(0, 5, &name)?.accept(&mut xs, Some(Duration::from_secs(5)))?;
///     # drop(link);
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Listener {
    own: DomId,
    peer: DomId,
    dir: Path,
    token: Path,
}

impl Listener {
    /// The offers of `peer` to `own` in `context`.
    ///
    /// # Errors
    ///
    /// [`KeyError::BadName`].
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::rendezvous::Listener;
    ///
    /// // Dom0 serving whatever channels domain 5 offers in context "conns".
    /// let l = Listener::new(0, 5, "conns")?;
    /// assert_eq!((l.own(), l.peer()), (0, 5));
    /// assert!(Listener::new(0, 5, "no/slash").is_err());
    /// # Ok::<(), coresident_xen::protocol::keys::KeyError>(())
    /// ```
    pub fn new(own: DomId, peer: DomId, context: &str) -> Result<Self, KeyError> {
        let context = Name::new(context)?;
        Ok(Self {
            own,
            peer,
            dir: keys::offers_from(peer, own, &context)?,
            token: Path::new(format_args!("coresident/listen/{peer}/{context}"))?,
        })
    }

    /// This domain.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::rendezvous::Listener;
    ///
    /// assert_eq!(Listener::new(0, 5, "conns")?.own(), 0);
    /// # Ok::<(), coresident_xen::protocol::keys::KeyError>(())
    /// ```
    pub fn own(&self) -> DomId {
        self.own
    }

    /// The peer domain.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::rendezvous::Listener;
    ///
    /// assert_eq!(Listener::new(0, 5, "conns")?.peer(), 5);
    /// # Ok::<(), coresident_xen::protocol::keys::KeyError>(())
    /// ```
    pub fn peer(&self) -> DomId {
        self.peer
    }

    /// Sets the watch (it fires once at once, then at every change of the
    /// peer's offers to us; events reach us only for nodes we may read).
    ///
    /// # Errors
    ///
    /// [`XsError`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use coresident_xen::rendezvous::Listener;
    /// use coresident_xen::xenstore::XsClient;
    /// use coresident_xen::XenStore;
    ///
    /// let mut xs = XenStore::open()?;
    /// let listener = Listener::new(0, 5, "conns")?;
    /// listener.listen(&mut xs)?;
    /// // Each event: look at what domain 5 offers now.
    /// while xs.wait_watch(Some(Duration::from_secs(60)))?.is_some() {
    ///     listener.offered(&mut xs, |name| println!("domain 5 offers {name}"))?;
    /// }
    /// listener.stop(&mut xs)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn listen<X: XsClient>(&self, xs: &mut X) -> Result<(), XsError> {
        xs.watch(self.dir.as_str(), self.token.as_str())
    }

    /// Removes the watch.
    ///
    /// # Errors
    ///
    /// [`XsError`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::rendezvous::Listener;
    /// use coresident_xen::XenStore;
    ///
    /// let mut xs = XenStore::open()?;
    /// let listener = Listener::new(0, 5, "conns")?;
    /// listener.listen(&mut xs)?;
    /// // ... domain 5 left: stop watching its offers.
    /// listener.stop(&mut xs)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stop<X: XsClient>(&self, xs: &mut X) -> Result<(), XsError> {
        xs.unwatch(self.dir.as_str(), self.token.as_str())
    }

    /// Calls `found` with the name of every channel the peer offers us now
    /// (its `offer/state` readable and `offered`); names outside the
    /// alphabet are skipped. Then accept each with a [`Rendezvous`](super::Rendezvous) of that
    /// name.
    ///
    /// # Errors
    ///
    /// [`XsError`] (a directory that does not exist is no offer).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::rendezvous::Listener;
    /// use coresident_xen::XenStore;
    ///
    /// let mut xs = XenStore::open()?;
    /// let mut names = Vec::new();
    /// Listener::new(0, 5, "conns")?.offered(&mut xs, |name| names.push(name.to_string()))?;
    /// println!("domain 5 offers {names:?}");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn offered<X: XsClient>(
        &self,
        xs: &mut X,
        mut found: impl FnMut(Name),
    ) -> Result<(), XsError> {
        // The names first (the reply is the client's until its next call).
        let mut names = [None::<Name>; 32];
        let mut more = true;
        let mut skip = 0;
        while more {
            let mut n = 0;
            more = false;
            match xs.directory(self.dir.as_str()) {
                Ok(list) => {
                    for raw in list.iter().skip(skip) {
                        let Some(name) = core::str::from_utf8(raw)
                            .ok()
                            .and_then(|s| Name::new(s).ok())
                        else {
                            skip += 1;
                            continue;
                        };
                        match names.get_mut(n) {
                            Some(slot) => {
                                *slot = Some(name);
                                n += 1;
                                skip += 1;
                            }
                            None => {
                                more = true;
                                break;
                            }
                        }
                    }
                }
                Err(XsError::NotFound) => return Ok(()),
                Err(e) if e.is_denied() => return Ok(()),
                Err(e) => return Err(e),
            }
            for name in names.iter().take(n).flatten() {
                let Ok(state) = Path::new(format_args!("{}/{name}/offer/state", self.dir.as_str()))
                else {
                    continue;
                };
                match xs.read(state.as_str()) {
                    Ok(v) if v == keys::OFFERED => found(*name),
                    Ok(_) | Err(XsError::NotFound) => {}
                    Err(e) if e.is_denied() => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
}
