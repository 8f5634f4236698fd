//! Which discovery backend the library's streams use (`CORESIDENT_DISCOVERY`).
//!
//! | value | backend |
//! |---|---|
//! | unset, empty, `host` | the host registry (processes and containers of one host) |
//! | `xen` | `coresident_net::xen::XenDiscovery`: dom0 and guests of one Xen host (the dom0 agent's residency view, the XenStore rendezvous); needs the library built with the cargo feature `xen` |
//! | `none` | plain TCP for every connection |
//!
//! Anything else, `xen` in a library built without it, or a Xen backend that cannot
//! start (no XenStore): a `tracing` warning and plain TCP. The value is an input like
//! any other: it is never echoed unbounded, and no value makes the host program fail.
//!
//! `CORESIDENT_HANDSHAKE_MS` bounds one channel handshake (the wait a `connect` may add
//! before it reaches the kernel): default 1000 ms on the host registry, 10000 ms on Xen
//! (a XenStore rendezvous takes several round trips through xenstored); clamped to
//! 1 ms .. 10 min. An unparsable value is the default.

use core::time::Duration;
use std::sync::{Arc, OnceLock};

use coresident_net::{Discovery, HostRegistry, NoDiscovery};

/// What `CORESIDENT_DISCOVERY` asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Choice {
    /// The host registry.
    Host,
    /// The Xen backend.
    Xen,
    /// Plain TCP, asked for.
    None,
    /// A value we do not know (at most 32 characters of it, for the warning).
    Unknown(String),
}

/// Parses `CORESIDENT_DISCOVERY` (`None`: unset). ASCII case and surrounding blanks do
/// not matter.
pub(crate) fn parse(value: Option<&std::ffi::OsStr>) -> Choice {
    let Some(v) = value else {
        return Choice::Host;
    };
    let Some(s) = v.to_str() else {
        return Choice::Unknown("(not UTF-8)".into());
    };
    let t = s.trim();
    if t.is_empty() || t.eq_ignore_ascii_case("host") {
        Choice::Host
    } else if t.eq_ignore_ascii_case("xen") {
        Choice::Xen
    } else if t.eq_ignore_ascii_case("none") {
        Choice::None
    } else {
        Choice::Unknown(t.chars().take(32).collect())
    }
}

/// Parses `CORESIDENT_HANDSHAKE_MS` for `choice`.
pub(crate) fn handshake_timeout(value: Option<&std::ffi::OsStr>, choice: &Choice) -> Duration {
    let default = match choice {
        Choice::Xen => Duration::from_secs(10),
        _ => Duration::from_secs(1),
    };
    value
        .and_then(|v| v.to_str())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(default, |ms| Duration::from_millis(ms.clamp(1, 600_000)))
}

/// The choice of this process (read once).
pub(crate) fn choice() -> &'static Choice {
    static C: OnceLock<Choice> = OnceLock::new();
    C.get_or_init(|| parse(std::env::var_os("CORESIDENT_DISCOVERY").as_deref()))
}

/// The handshake deadline of this process (read once).
pub(crate) fn timeout() -> Duration {
    static T: OnceLock<Duration> = OnceLock::new();
    *T.get_or_init(|| {
        handshake_timeout(
            std::env::var_os("CORESIDENT_HANDSHAKE_MS").as_deref(),
            choice(),
        )
    })
}

/// The host registry in the library's registry directory, with the credential policy
/// of `CORESIDENT_CREDENTIALS`: `same-uid` (the default: a peer of another uid gets
/// plain TCP, never a ring) or `any-uid` (containers that map users differently and
/// share a bind-mounted registry directory: its permissions are then the policy).
fn registry() -> HostRegistry {
    let r = HostRegistry::at(crate::control::registry_dir());
    match std::env::var("CORESIDENT_CREDENTIALS").as_deref() {
        Ok("any-uid") => r.with_policy(coresident_net::CredentialPolicy::AnyUid),
        _ => r,
    }
}

/// The backend for `choice`, made now. Never fails: what cannot be made is plain TCP,
/// with a warning.
pub(crate) fn make(choice: &Choice) -> Arc<dyn Discovery> {
    match choice {
        Choice::Host => Arc::new(registry()),
        Choice::None => Arc::new(NoDiscovery),
        Choice::Xen => xen(),
        Choice::Unknown(v) => {
            tracing::warn!(target: "coresident_preload", value = ?v,
                "CORESIDENT_DISCOVERY: unknown backend (host, xen or none): plain TCP");
            Arc::new(NoDiscovery)
        }
    }
}

#[cfg(feature = "xen")]
fn xen() -> Arc<dyn Discovery> {
    match coresident_net::xen::XenDiscovery::new() {
        Ok(x) => {
            tracing::info!(target: "coresident_preload", domid = x.domid(),
                peers = x.peers().len(), "Xen backend: residency view up");
            Arc::new(x)
        }
        Err(e) => {
            tracing::warn!(target: "coresident_preload", error = %e,
                "CORESIDENT_DISCOVERY=xen: the Xen backend cannot start: plain TCP");
            Arc::new(NoDiscovery)
        }
    }
}

#[cfg(not(feature = "xen"))]
fn xen() -> Arc<dyn Discovery> {
    tracing::warn!(target: "coresident_preload",
        "CORESIDENT_DISCOVERY=xen: this library was built without the feature xen: plain TCP");
    Arc::new(NoDiscovery)
}

/// This process's backend, made at its first use (a listen or a connect), shared by
/// every listener and connection (one residency view per process).
pub(crate) fn discovery() -> &'static Arc<dyn Discovery> {
    static D: OnceLock<Arc<dyn Discovery>> = OnceLock::new();
    D.get_or_init(|| make(choice()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    fn p(s: &str) -> Choice {
        parse(Some(OsStr::new(s)))
    }

    #[test]
    fn the_discovery_variable_is_parsed_strictly() {
        assert_eq!(parse(None), Choice::Host);
        assert_eq!(p(""), Choice::Host);
        assert_eq!(p("host"), Choice::Host);
        assert_eq!(p(" HOST\n"), Choice::Host);
        assert_eq!(p("xen"), Choice::Xen);
        assert_eq!(p("Xen "), Choice::Xen);
        assert_eq!(p("none"), Choice::None);
        assert_eq!(p("xen,host"), Choice::Unknown("xen,host".into()));
        assert_eq!(p("xenx"), Choice::Unknown("xenx".into()));
        assert_eq!(p("x\u{1b}[2J"), Choice::Unknown("x\u{1b}[2J".into()));
        // Bounded, whatever its length.
        match p(&"a".repeat(100_000)) {
            Choice::Unknown(v) => assert_eq!(v.len(), 32),
            other => panic!("{other:?}"),
        }
        match p(&"é".repeat(100)) {
            Choice::Unknown(v) => assert_eq!(v.chars().count(), 32),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse(Some(OsStr::from_bytes(b"xe\xffn"))),
            Choice::Unknown("(not UTF-8)".into())
        );
    }

    #[test]
    fn unknown_and_none_make_plain_tcp() {
        let dst = "127.0.0.1:9".parse().unwrap();
        for c in [Choice::None, Choice::Unknown("bogus".into())] {
            let d = make(&c);
            assert_eq!(d.name(), "none", "{c:?}");
            assert!(!d.may_serve(dst));
        }
        assert_eq!(make(&Choice::Host).name(), "host");
    }

    /// Without the feature, `xen` is plain TCP; with it, a host without XenStore is too
    /// (neither panics).
    #[test]
    fn xen_without_xen_is_plain_tcp() {
        if std::path::Path::new("/dev/xen/xenbus").exists() {
            return; // a real Xen domain: the backend may start
        }
        let d = make(&Choice::Xen);
        assert_eq!(d.name(), "none");
    }

    #[test]
    fn the_handshake_deadline_has_bounds_and_defaults() {
        let t = |v: &str, c: &Choice| handshake_timeout(Some(OsStr::new(v)), c);
        assert_eq!(
            handshake_timeout(None, &Choice::Host),
            Duration::from_secs(1)
        );
        assert_eq!(
            handshake_timeout(None, &Choice::Xen),
            Duration::from_secs(10)
        );
        assert_eq!(t("250", &Choice::Host), Duration::from_millis(250));
        assert_eq!(t(" 60000 ", &Choice::Xen), Duration::from_secs(60));
        assert_eq!(t("0", &Choice::Host), Duration::from_millis(1));
        assert_eq!(t("99999999999", &Choice::Host), Duration::from_secs(600));
        assert_eq!(t("-5", &Choice::Xen), Duration::from_secs(10));
        assert_eq!(t("1e3", &Choice::Host), Duration::from_secs(1));
        assert_eq!(t("", &Choice::Host), Duration::from_secs(1));
    }
}
