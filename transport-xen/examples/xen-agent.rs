//! `xen-agent`: the residency agent daemon, run in dom0.
//!
//! Watches which domains advertise support (and their MAC and IP addresses)
//! in XenStore and writes to each the list of its co-resident peers; prints
//! every change. See `coresident_xen::residency` for the keys.
//!
//! ```text
//! xen-agent [--once] [--for SECONDS] [--advertise ADDR[,ADDR...]]
//!           [--allow NAME=ADDR[,ADDR...]]... [--debounce MS]
//!   --once         read everything, write the lists, print, exit
//!   --for SECONDS  run that long (default: until `quit` or a signal)
//!   --advertise    advertise dom0 itself with these addresses (MAC,
//!                  IPv4 or IPv6, comma-separated; "" for none)
//!   --allow        let the domain named NAME (xl's name) claim these
//!                  addresses beyond its vifs' MACs and `ip` (repeatable)
//!   --debounce MS  apply one domain's changes at most once per MS
//!                  milliseconds (default 1000; 0: off)
//! ```
//!
//! A guest may advertise only what the toolstack gave it (its vifs' MACs
//! and `ip=` entries) or `--allow` names: anything else is refused
//! (`coresident_xen::residency::Policy`).
//!
//! Commands on stdin, one per line: `withdraw DOMID` (take a domain out of
//! every list, as a migration away would), `readmit DOMID`, `list`, `quit`.
#![cfg_attr(not(target_os = "linux"), allow(unused))]

#[cfg(target_os = "linux")]
fn main() {
    if let Err(e) = linux::run() {
        eprintln!("xen-agent: {e}");
        std::process::exit(1);
    }
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("xen-agent: Linux only");
}

#[cfg(target_os = "linux")]
mod linux {
    use std::error::Error;
    use std::io::{BufRead, Write};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use coresident_xen::residency::{self, Addr, Addresses, Agent, Change, Policy};
    use coresident_xen::XenStore;

    const USAGE: &str = "usage: xen-agent [--once] [--for SECONDS] [--advertise ADDR[,ADDR...]] \
[--allow NAME=ADDR[,ADDR...]]... [--debounce MS]";

    fn parse_list(list: &str) -> Result<Addresses, Box<dyn Error>> {
        let addrs = list
            .split(',')
            .filter(|s| !s.is_empty())
            .map(parse_addr)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Addresses::from_addrs(addrs)?)
    }

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

    fn say(line: &str) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "xen-agent: {line}");
        let _ = out.flush();
    }

    fn print_lists(agent: &Agent) {
        for (d, status) in agent.domains() {
            let peers: Vec<_> = agent
                .list_of(*d)
                .map(|l| l.keys().copied().collect())
                .unwrap_or_default();
            say(&format!("domain {d}: {status:?}, list {peers:?}"));
        }
    }

    pub fn run() -> Result<(), Box<dyn Error>> {
        let mut once = false;
        let mut run_for = None;
        let mut advertise = None;
        let mut policy = Policy::default();
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            match a.as_str() {
                "--once" => once = true,
                "--for" => {
                    let s: u64 = args.next().ok_or(USAGE)?.parse().map_err(|_| USAGE)?;
                    run_for = Some(Duration::from_secs(s));
                }
                "--advertise" => advertise = Some(parse_list(&args.next().ok_or(USAGE)?)?),
                "--allow" => {
                    let arg = args.next().ok_or(USAGE)?;
                    let (name, list) = arg.split_once('=').ok_or(USAGE)?;
                    policy = policy.allow(name, parse_list(list)?);
                }
                "--debounce" => {
                    let ms: u64 = args.next().ok_or(USAGE)?.parse().map_err(|_| USAGE)?;
                    policy = policy.debounce(Duration::from_millis(ms));
                }
                _ => return Err(USAGE.into()),
            }
        }
        let mut agent = Agent::with_policy(XenStore::open()?, policy)?;
        if let Some(a) = &advertise {
            residency::advertise(agent.xenstore(), 0, a)?;
            say(&format!("dom0 advertises {} addresses", a.len()));
        }
        if once {
            loop {
                let changes = agent.run_once()?;
                if changes.is_empty() {
                    break;
                }
                changes.iter().for_each(|c| say(&c.to_string()));
            }
            print_lists(&agent);
            return Ok(());
        }
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = run_for.map(|d| Instant::now() + d);
        say("running");
        loop {
            let mut wait = Duration::from_millis(200);
            if let Some(d) = deadline {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                wait = wait.min(left);
            }
            let changes = agent.step(Some(wait))?;
            changes.iter().for_each(|c| say(&c.to_string()));
            while let Ok(cmd) = rx.try_recv() {
                let words: Vec<&str> = cmd.split_whitespace().collect();
                let domid = || words.get(1).and_then(|d| d.parse::<u16>().ok());
                let done: Vec<Change> = match (words.first().copied(), domid()) {
                    (Some("withdraw"), Some(d)) => agent.withdraw(d)?,
                    (Some("readmit"), Some(d)) => agent.readmit(d)?,
                    (Some("list"), _) => {
                        print_lists(&agent);
                        Vec::new()
                    }
                    (Some("quit"), _) => {
                        say("quit");
                        return Ok(());
                    }
                    (None, _) => Vec::new(),
                    _ => {
                        say(&format!("unknown command {cmd:?}"));
                        Vec::new()
                    }
                };
                done.iter().for_each(|c| say(&c.to_string()));
            }
        }
        say("time is up");
        Ok(())
    }
}
