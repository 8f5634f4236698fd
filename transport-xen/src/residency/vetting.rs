//! Vetting one domain's advertisement before the agent lists it: the node must be
//! owned by the domain whose home holds it, it must parse, and every address in it
//! must be one the toolstack gave the domain (its vifs' MACs and `ip`) or one
//! dom0's policy allows its name.

use super::addr::{Addr, Addresses, AdvertError};
use super::change::{AgentError, Status};
use super::policy::{Grants, IpNet, Policy};
use super::{advert_path, home_path};
use crate::types::DomId;
use crate::xenstore::{XsClient, XsError};

/// Most vifs of one domain whose MACs and IPs are read.
const MAX_VIFS: usize = 64;

/// Where dom0's vif backends of every domain live.
pub(super) const VIF_BACKENDS: &str = "/local/domain/0/backend/vif/";

/// Where dom0's vif backends of domain `d` live.
pub(super) fn vif_path(d: DomId) -> String {
    format!("{VIF_BACKENDS}{d}")
}

/// Whether an error is about one node (the connection is still fine).
pub(super) fn local(e: XsError) -> bool {
    matches!(
        e,
        XsError::NotFound | XsError::Daemon(_) | XsError::Value(_)
    )
}

/// Reads and checks `d`'s advertisement.
pub(super) fn read_advert<X: XsClient>(
    xs: &mut X,
    policy: &Policy,
    d: DomId,
) -> Result<Status, AgentError> {
    let path = advert_path(d);
    let value = match xs.read(&path) {
        Ok(v) => v.to_vec(),
        Err(XsError::NotFound) => return Ok(Status::Silent),
        Err(e) if local(e) => return Ok(Status::Rejected(AdvertError::Unreadable)),
        Err(e) => return Err(e.into()),
    };
    // Trust the domain id XenStore gives, never one a guest writes:
    // the node must be owned by the domain whose path holds it.
    match xs.perms(&path) {
        Ok(p) => match p.first() {
            Some(owner) if owner.domid == d => {}
            Some(owner) => return Ok(Status::Rejected(AdvertError::Owner(owner.domid))),
            None => return Ok(Status::Rejected(AdvertError::Unreadable)),
        },
        Err(XsError::NotFound) => return Ok(Status::Silent),
        Err(e) if local(e) => return Ok(Status::Rejected(AdvertError::Unreadable)),
        Err(e) => return Err(e.into()),
    }
    let addrs = match Addresses::parse_advert(&value) {
        Ok(a) => a,
        Err(e) => return Ok(Status::Rejected(e)),
    };
    // Finding 6: every address must be one the toolstack gave the
    // domain (its vifs' MACs and `ip`) or dom0's policy allows it;
    // dom0 is trusted.
    if d != 0 && !addrs.is_empty() {
        if let Some(a) = grants(xs, policy, d)?.first_unowned(&addrs) {
            return Ok(Status::Rejected(match a {
                Addr::Mac(m) => AdvertError::MacNotOwned(m),
                ip => AdvertError::IpNotOwned(ip),
            }));
        }
    }
    Ok(Status::Advertising(addrs))
}

/// What vouches for `d`'s addresses: the MACs and `ip` entries of its
/// vifs whose backend is in dom0 (`/local/domain/0/backend/vif/N/DEVID/
/// {mac,ip}`, written by the toolstack and not writable by the guest;
/// malformed entries are skipped), and what the policy allows its name
/// (`/local/domain/N/name`, the toolstack's too).
fn grants<X: XsClient>(xs: &mut X, policy: &Policy, d: DomId) -> Result<Grants, AgentError> {
    let mut g = Grants::default();
    if policy.has_names() {
        match xs.read(&format!("{}/name", home_path(d))) {
            Ok(name) => {
                if let Some(a) = core::str::from_utf8(name)
                    .ok()
                    .and_then(|n| policy.allowed(n))
                {
                    g.allowed = a.clone();
                }
            }
            Err(e) if local(e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let dir = vif_path(d);
    let devs = match xs.children(&dir) {
        Ok(devs) => devs,
        Err(e) if local(e) => return Ok(g),
        Err(e) => return Err(e.into()),
    };
    for dev in devs.iter().take(MAX_VIFS) {
        match xs.read(&format!("{dir}/{dev}/mac")) {
            Ok(v) => {
                let mut line = b"mac ".to_vec();
                line.extend_from_slice(v);
                if let Ok(a) = Addresses::parse(&line) {
                    g.macs.extend_from_slice(a.macs());
                }
            }
            Err(e) if local(e) => {}
            Err(e) => return Err(e.into()),
        }
        match xs.read(&format!("{dir}/{dev}/ip")) {
            Ok(v) => {
                let text = String::from_utf8_lossy(v);
                g.nets.extend(
                    text.split_ascii_whitespace()
                        .take(64)
                        .filter_map(IpNet::parse),
                );
            }
            Err(e) if local(e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(g)
}
