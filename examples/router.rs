//! Two processes on one host, a `Router` each, built from the host registry with
//! `TcpPath` as the network path. The sender's flow takes the shared-memory ring while
//! both are registered; half-way the sender withdraws (as a process about to move
//! away would), its flow falls back to TCP, and the receiver still gets every message
//! once, in order.
//!
//! ```text
//! cargo run --example router          # the sender; it starts the receiver itself
//! ```
use coresident::{path::TcpPath, RouteError, Router};
use coresident_shm::{HostConfig, HostDiscovery, Registry};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1); // the sender
const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2); // the receiver
const N: u64 = 200_000;

/// Each peer's TCP port on this host (a real deployment resolves its peers' addresses).
fn addr(ip: Ipv4Addr) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 47_000 + u16::from(ip.octets()[3])))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let receiver = std::env::args().nth(1).as_deref() == Some("receiver");
    let me = if receiver { B } else { A };
    let registry = Registry::open(std::env::temp_dir().join("coresident-example-router"))?;
    let discovery = HostDiscovery::new(registry, HostConfig::ipv4(me.to_string().parse()?))?;
    let withdraw = discovery.withdrawer();
    let net = TcpPath::bind(me, addr(me), |ip| Some(addr(*ip)))?;
    let mut router = Router::builder()
        .discovery(discovery)
        .network(net)
        .build()?;

    if receiver {
        let mut next = 0u64;
        while next < N {
            router.poll()?; // applies what discovery found
            match router.recv_blocking(Some(Duration::from_millis(100)), |peer, flow, m| {
                assert_eq!((*peer, flow), (A, 1));
                assert_eq!(m[..8], next.to_le_bytes(), "every message once, in order");
                next += 1;
            }) {
                Ok(_) | Err(RouteError::TimedOut) => {}
                Err(e) => return Err(e.into()),
            }
        }
        println!("receiver: {N} messages, in order; {:?}", router.stats().rx);
        return Ok(());
    }

    let mut child = std::process::Command::new(std::env::current_exe()?)
        .arg("receiver")
        .spawn()?;
    while router.handle_of(&B).is_none() {
        router.poll()?; // waits for the receiver to register and the channel to be set up
        std::thread::sleep(Duration::from_millis(10));
    }
    for i in 0..N {
        if i == N / 2 {
            withdraw.withdraw(); // leaving: the next poll fails the channel over
        }
        router.send_blocking(&B, 1, &i.to_le_bytes(), Some(Duration::from_secs(30)))?;
        if i % 1024 == 0 {
            router.poll()?;
        }
    }
    while child.try_wait()?.is_none() {
        router.poll()?; // acknowledgements, and any resend still waiting
        std::thread::sleep(Duration::from_millis(5));
    }
    let s = router.stats();
    println!(
        "sender: {} by the ring, {} by TCP, {} fail-over(s)",
        s.via_channel, s.via_network, s.fallbacks
    );
    Ok(())
}
