//! The network half of a [`Router`](crate::Router): the trait a network path
//! implements ([`NetworkPath`], with the contract that keeps flows lossless), and the
//! inbox through which it hands received messages to the router's reassembly.

use crate::flow::FlowHeader;
use core::fmt;
use core::time::Duration;

/// What the inbox did with a message a network path offered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offered {
    /// Taken: delivered, held for a gap, or dropped as a duplicate. Forget it.
    Taken,
    /// Not now (a budget is full): keep it and offer it again later, before anything
    /// that came after it from the same sender. TCP's own flow control then slows the
    /// sender.
    Later,
    /// Refused for good (beyond the window, an unknown sender): drop it.
    Refused,
}

/// Where a network path hands what it received (the router's reassembly).
pub trait Inbox<K> {
    /// Offers one message of `peer`.
    fn offer(&mut self, peer: &K, header: FlowHeader, payload: &[u8]) -> Offered;

    /// The next sequence number `flow` of `peer` expects.
    fn expected(&self, peer: &K, flow: u32) -> u64;

    /// Each flow of `peer` the receiver tracks, with the next sequence number it
    /// expects: what a reconnecting sender resumes from.
    fn for_each_flow(&self, peer: &K, f: &mut dyn FnMut(u32, u64));
}

/// The network path: a socket in a daemon ([`TcpPath`](crate::path::TcpPath),
/// [`UdpPath`](crate::path::UdpPath) or your own), the netfilter continuation in a
/// kernel module. Only [`send`](Self::send) is required; the rest has defaults for a
/// path the caller drives itself (receiving with
/// [`Router::recv_network_from`](crate::Router::recv_network_from)).
///
/// The contract that keeps flows lossless:
///
/// - [`NetworkPath::send`] returning `Ok` means the path has **taken** the message:
///   from then on delivering it (or promising nothing, for a datagram path) is the
///   path's job. Returning `Err` means it did **not**: nothing of it will arrive, and
///   the router does not use up its sequence number, so the flow has no gap.
/// - A reliable path ([`TcpPath`](crate::path::TcpPath)) keeps what it took until the
///   receiver acknowledges it ([`NetworkPath::delivered`] on the receiving side tells
///   it what was delivered, by either path), and resends it after a reconnect from the
///   receiver's next expected sequence number per (peer, flow).
/// - The receiving side names each message's sender by the same key the sender's
///   channel has in the residency table, so both paths of a flow meet in one
///   reassembly state, and one peer cannot fill another's flows.
pub trait NetworkPath<K> {
    /// Its failures.
    type Error: fmt::Debug + fmt::Display;

    /// Takes one message of a flow for `peer`, without blocking. The header must reach
    /// the peer's reassembly with the payload.
    ///
    /// # Errors
    ///
    /// The path's own; the message was **not** taken (see the [trait docs](NetworkPath)).
    fn send(&mut self, peer: &K, header: FlowHeader, payload: &[u8]) -> Result<(), Self::Error>;

    /// As [`send`](Self::send), waiting up to `timeout` (`None`: no bound) for the
    /// path to have room (a full replay buffer, a full socket).
    ///
    /// # Errors
    ///
    /// As `send`; the message was not taken.
    fn send_blocking(
        &mut self,
        peer: &K,
        header: FlowHeader,
        payload: &[u8],
        timeout: Option<Duration>,
    ) -> Result<(), Self::Error> {
        let _ = timeout;
        self.send(peer, header, payload)
    }

    /// Takes back a message the router had taken earlier and must send again: a failed
    /// channel's unconsumed frames, oldest first. A path with a bounded buffer takes
    /// these beyond its bound (their number is bounded by the ring they came from):
    /// newer messages of the flow may already wait at the receiver for them, and a
    /// buffer full of those could never drain. The default is [`send`](Self::send).
    ///
    /// # Errors
    ///
    /// As `send`; the router keeps the message and tries again, in order.
    fn resend(&mut self, peer: &K, header: FlowHeader, payload: &[u8]) -> Result<(), Self::Error> {
        self.send(peer, header, payload)
    }

    /// Whether messages of `flow` to `peer` that this path took are not yet known to be
    /// delivered. While they are, the router keeps the flow on this path: a newer
    /// message by a channel would overtake them, the receiver would hold it (it cannot
    /// hand it over out of order), and a receiver that crashed then would have taken it
    /// out of the ring and lost it. A path that cannot tell returns `false` (the
    /// default): then the no-loss promise covers a *sender's* fail-over, not a receiver
    /// that crashes while holding channel messages.
    fn in_flight(&self, peer: &K, flow: u32) -> bool {
        let _ = (peer, flow);
        false
    }

    /// Blocks up to `timeout` for the path to make progress (an acknowledgement, room),
    /// for a blocking send that waits on it. The default sleeps.
    fn wait(&mut self, timeout: Duration) {
        #[cfg(feature = "std")]
        std::thread::sleep(timeout);
        #[cfg(not(feature = "std"))]
        let _ = timeout;
    }

    /// Hands what arrived to `inbox`, without blocking; returns how many messages were
    /// offered.
    ///
    /// # Errors
    ///
    /// The path's own (a broken listener; a broken connection is the path's to drop).
    fn recv(&mut self, inbox: &mut dyn Inbox<K>) -> Result<usize, Self::Error> {
        let _ = inbox;
        Ok(0)
    }

    /// Periodic duty: reconnects, acknowledgements, resends.
    ///
    /// # Errors
    ///
    /// The path's own.
    fn poll(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }

    /// Whether the path wants [`delivered`](Self::delivered) calls (a path with
    /// acknowledgements does).
    fn wants_progress(&self) -> bool {
        false
    }

    /// The receiving side delivered `flow` of `peer` up to `next` (exclusive), by either
    /// path: acknowledge it, so the sender frees its replay buffer.
    fn delivered(&mut self, peer: &K, flow: u32, next: u64) {
        let _ = (peer, flow, next);
    }

    /// The end of a round of [`delivered`](Self::delivered) and
    /// [`resend_from`](Self::resend_from) calls: send what they queued.
    fn flush_progress(&mut self) {}

    /// The receiving side evicted messages of `flow` of `peer` from `seq` on that this
    /// path had carried: ask the sender to send them again.
    fn resend_from(&mut self, peer: &K, flow: u32, seq: u64) {
        let _ = (peer, flow, seq);
    }

    /// One descriptor, the same for the path's life, that is readable when
    /// [`recv`](Self::recv) or [`poll`](Self::poll) has work (an epoll instance over
    /// the path's sockets, say): the router's pollable descriptor includes it.
    #[cfg(all(feature = "std", unix))]
    fn wait_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        None
    }
}
