//! `xen-advertise`: advertise this domain's support and addresses to the dom0
//! residency agent (or take the advertisement back), then exit. The advertisement
//! is a XenStore key: it stays after this program exits.
//!
//! ```text
//! xen-advertise [--mac-of IFACE] [ADDR[,ADDR...]]   advertise these addresses
//! xen-advertise --remove                            unadvertise
//! ```
//!
//! `ADDR`s are IPv4, IPv6 or MAC addresses; `--mac-of eth0` adds the MAC that
//! `/sys/class/net/eth0/address` reports (a guest's vif). The agent lists only
//! what the toolstack gave the domain (`coresident_xen::residency::Policy`). The
//! domU of `.ci/xen`'s domu-socat job runs it before its programs: the preload
//! library's Xen backend needs both ends listed, and advertising is a domain's
//! decision, not one program's.
#![cfg_attr(not(target_os = "linux"), allow(unused))]

#[cfg(target_os = "linux")]
fn main() {
    if let Err(e) = linux::run() {
        eprintln!("xen-advertise: {e}");
        std::process::exit(1);
    }
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("xen-advertise: Linux only");
}

#[cfg(target_os = "linux")]
mod linux {
    use std::error::Error;

    use coresident_xen::residency::{self, Addr, Addresses};
    use coresident_xen::XenStore;

    const USAGE: &str =
        "usage: xen-advertise [--mac-of IFACE] [ADDR[,ADDR...]] | xen-advertise --remove";

    fn parse_addr(s: &str) -> Result<Addr, String> {
        if let Ok(a) = s.parse() {
            return Ok(Addr::Ipv4(a));
        }
        if let Ok(a) = s.parse() {
            return Ok(Addr::Ipv6(a));
        }
        // A MAC: six hex octets; the residency parser checks it is unicast.
        let line = format!("mac {s}");
        match Addresses::parse(line.as_bytes()) {
            Ok(a) => a.iter().next().ok_or_else(|| format!("bad address {s:?}")),
            Err(e) => Err(format!("bad address {s:?}: {e}")),
        }
    }

    /// The MAC address of `iface`, as the kernel reports it.
    fn mac_of(iface: &str) -> Result<Addr, Box<dyn Error>> {
        residency::mac_of(iface)
            .map(Addr::Mac)
            .ok_or_else(|| format!("no unicast MAC address for interface {iface:?}").into())
    }

    pub fn run() -> Result<(), Box<dyn Error>> {
        let mut addrs = Vec::new();
        let mut remove = false;
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            match a.as_str() {
                "--remove" => remove = true,
                "--mac-of" => addrs.push(mac_of(&args.next().ok_or(USAGE)?)?),
                "-h" | "--help" => {
                    println!("{USAGE}");
                    return Ok(());
                }
                list if !list.starts_with('-') => {
                    for s in list.split(',').filter(|s| !s.is_empty()) {
                        addrs.push(parse_addr(s)?);
                    }
                }
                _ => return Err(USAGE.into()),
            }
        }
        if remove && !addrs.is_empty() {
            return Err(USAGE.into());
        }
        let mut xs = XenStore::open()?;
        let own = residency::own_domid(&mut xs)?;
        if remove {
            residency::unadvertise(&mut xs, own)?;
            println!("xen-advertise: dom{own} unadvertised");
            return Ok(());
        }
        let addrs = Addresses::from_addrs(addrs)?;
        residency::advertise(&mut xs, own, &addrs)?;
        println!(
            "xen-advertise: dom{own} advertises {}",
            addrs.encode().replace('\n', "; ")
        );
        Ok(())
    }
}
