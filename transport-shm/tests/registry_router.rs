//! Residency detection on one host, end to end: the registry says who lives here, the
//! control path fills the router's residency table from it, traffic takes the channel;
//! the peer leaves the registry mid-stream, the control path removes it from the table
//! and fails the channel over, and the flow continues over the network path with
//! nothing lost, duplicated or reordered.
#![cfg(target_os = "linux")]

use coresident::lookup::{Seed, Table};
use coresident::{
    Channel, ChannelConfig, FlowHeader, NetworkPath, Path, Router, StdClock, ThresholdPolicy,
};
use coresident_shm::{
    AcceptConfig, MemfdRegion, OfferConfig, PeerId, PeerLink, Registry, RegistryEvent,
};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

const N: u64 = 20_000;

/// The network path: a queue to the peer (reliable and ordered, like TCP).
struct Net(mpsc::Sender<(FlowHeader, Vec<u8>)>);

impl NetworkPath<Ipv4Addr> for Net {
    type Error = std::convert::Infallible;
    fn send(&mut self, _: &Ipv4Addr, h: FlowHeader, p: &[u8]) -> Result<(), Self::Error> {
        let _ = self.0.send((h, p.to_vec()));
        Ok(())
    }
}

type R<'t> = Router<'t, Ipv4Addr, MemfdRegion, PeerLink, StdClock, Net, ThresholdPolicy, 16>;

fn payload(i: u64) -> Vec<u8> {
    let mut p = i.to_le_bytes().to_vec();
    p.resize(8 + (i % 200) as usize, (i % 251) as u8);
    p
}

fn dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("registry-router-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d // `Registry::open` creates it, mode 0700
}

#[test]
fn the_registry_drives_the_residency_table_and_the_flow_survives_departure() {
    let dir = dir();
    let registry = Registry::open(&dir).unwrap();
    let (a_id, b_id): (PeerId, PeerId) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
    // The registry's ids key the residency table directly.
    let (a_key, b_key): (Ipv4Addr, Ipv4Addr) = (a_id.key().unwrap(), b_id.key().unwrap());
    let (to_b, b_net) = mpsc::channel::<(FlowHeader, Vec<u8>)>();
    let (back_tx, _back_rx) = mpsc::channel::<(FlowHeader, Vec<u8>)>();
    let config = ChannelConfig {
        liveness: None,
        ..ChannelConfig::default()
    };
    let mut watcher = registry.watch().unwrap();

    std::thread::scope(|s| {
        // B: registers, accepts one offer, receives from both paths; halfway through it
        // leaves the registry (as a container being moved away would).
        let registry_b = Registry::open(&dir).unwrap();
        let b_id2 = b_id.clone();
        let b = s.spawn(move || {
            let table: Table<Ipv4Addr, 16> = Table::new(Seed::new([9, 8, 7, 6]));
            let mut rb: R = Router::new(&table, ThresholdPolicy::default(), Net(back_tx), 1 << 16);
            let listener = registry_b.register(&b_id2).unwrap();
            let ep = listener.accept(&AcceptConfig::default()).unwrap();
            let ch = Channel::new(ep.into_link(), config, StdClock::default()).unwrap();
            rb.attach(a_key, ch).unwrap();
            let mut listener = Some(listener);
            let got = std::cell::Cell::new(0u64);
            let t0 = Instant::now();
            let mut deliver = |flow: u32, m: &[u8]| {
                let g = got.get();
                assert_eq!(flow, 1);
                assert_eq!(m, &payload(g)[..], "message {g}");
                got.set(g + 1);
            };
            while got.get() < N {
                assert!(
                    t0.elapsed() < Duration::from_secs(60),
                    "watchdog: {} of {N}",
                    got.get()
                );
                rb.recv_channels(&mut deliver).unwrap();
                while let Ok((h, p)) = b_net.try_recv() {
                    rb.recv_network(h, &p, &mut deliver).unwrap();
                }
                if got.get() >= N / 2 && listener.is_some() {
                    listener = None; // leaves the registry: its socket goes away
                }
                std::thread::yield_now();
            }
            rb.duplicates()
        });

        // A: the control path and the sender in one loop.
        let table: Table<Ipv4Addr, 16> = Table::new(Seed::new([1, 2, 3, 4]));
        let mut writer = table.writer().unwrap();
        let mut ra: R = Router::new(&table, ThresholdPolicy::default(), Net(to_b), 1 << 16);
        let t0 = Instant::now();
        let handle = loop {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "watchdog: B never joined"
            );
            let events = watcher
                .next_events(Some(Duration::from_millis(50)))
                .unwrap();
            if events.contains(&RegistryEvent::Joined(b_id.clone())) {
                // The endpoint `Registry::connect` gives is ready for `Channel::new`.
                let ep = registry
                    .connect(&b_id, &OfferConfig::new(a_id.clone()))
                    .unwrap();
                let ch = Channel::new(ep.into_link(), config, StdClock::default()).unwrap();
                let h = ra.attach(b_key, ch).unwrap();
                writer.insert(b_key, h).unwrap();
                break h;
            }
        };
        let mut left = false;
        let (mut via_channel_before, mut via_network_after) = (0, 0);
        for i in 0..N {
            // The residency update, every 256 messages (a rescan probes sockets).
            if i % 256 == 0 && !left {
                for e in watcher.next_events(Some(Duration::ZERO)).unwrap() {
                    if e == RegistryEvent::Left(b_id.clone()) {
                        writer.remove(&b_key);
                        ra.peer_left(handle).unwrap();
                        left = true;
                    }
                }
            }
            match ra.send(&b_key, 1, &payload(i)).unwrap() {
                Path::Channel if !left => via_channel_before += 1,
                Path::Network if left => via_network_after += 1,
                _ => {}
            }
            // Pace to the receiver while resident: a full ring would also divert.
            if i % 64 == 0 {
                ra.flush();
                ra.poll().unwrap();
                ra.recv_channels(|_, _| {}).unwrap();
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        ra.flush();
        // Wait for B to see the departure-and-finish; keep draining our side meanwhile.
        let t0 = Instant::now();
        while !b.is_finished() {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "watchdog: B did not finish"
            );
            if !left {
                for e in watcher
                    .next_events(Some(Duration::from_millis(20)))
                    .unwrap()
                {
                    if e == RegistryEvent::Left(b_id.clone()) {
                        writer.remove(&b_key);
                        ra.peer_left(handle).unwrap();
                        left = true;
                    }
                }
            }
            ra.recv_channels(|_, _| {}).unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
        let dups = b.join().unwrap();
        eprintln!(
            "via channel before leaving: {via_channel_before}, via network after: {via_network_after}, \
             resent: {}, duplicates dropped: {dups}",
            ra.stats().resent
        );
        assert!(
            via_channel_before > 0,
            "a resident peer's traffic takes the channel"
        );
        assert!(left, "the registry reported the departure");
        assert_eq!(ra.stats().fallbacks, 1);
    });
    let _ = std::fs::remove_dir_all(&dir);
}
