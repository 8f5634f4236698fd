//! `UdpPath`: one datagram per message, `[flow header][payload]`.
//!
//! # What it does not promise
//!
//! - **Delivery.** A lost datagram is lost; nothing resends it. Worse, the receiver's
//!   reassembly holds the flow's later messages behind the gap until
//!   [`Router::skip_gap`](crate::Router::skip_gap) gives it up (call it from a timer
//!   when a flow has held messages and makes no progress). So the router's no-loss
//!   guarantee covers what the *channel* carried, not this path: fail-over resends
//!   sent here can be lost too.
//! - **Back-pressure.** A full socket buffer refuses the send ([`UdpError::WouldBlock`],
//!   the message not taken); a full receiver drops datagrams in its kernel.
//! - **Authenticity.** The sender is named by the datagram's source address, which
//!   anyone on the path can forge: the `source` function decides which addresses map
//!   to which keys, and a key it returns is trusted.
//! - **Size.** A payload over 65,491 bytes (a UDP datagram less the header) is refused.
//!
//! What it does give: no connection state, one system call per message, duplicates
//! dropped and reordering undone by the reassembly (within its window).

use crate::flow::{FlowHeader, FLOW_HEADER_LEN};
use crate::net::{Inbox, NetworkPath, Offered};
use core::fmt;
use core::net::SocketAddr;
use std::boxed::Box;
use std::io;
use std::net::UdpSocket;
use std::os::fd::{AsFd, BorrowedFd};
use std::vec::Vec;

/// Where a destination key lives.
type Resolve<K> = Box<dyn FnMut(&K) -> Option<SocketAddr> + Send>;

/// The largest payload of one datagram.
pub const MAX_UDP_PAYLOAD: usize = 65_507 - FLOW_HEADER_LEN;

/// Why a [`UdpPath`] did not take a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UdpError {
    /// No address is known for the destination.
    NoRoute,
    /// The payload exceeds [`MAX_UDP_PAYLOAD`].
    TooLarge {
        /// Its length.
        len: usize,
    },
    /// The socket buffer is full now.
    WouldBlock,
    /// A system call failed with this `errno`.
    Os(i32),
}

impl fmt::Display for UdpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NoRoute => f.write_str("udp path: no address known for the destination"),
            Self::TooLarge { len } => write!(
                f,
                "udp path: a {len}-byte payload exceeds one datagram ({MAX_UDP_PAYLOAD} bytes)"
            ),
            Self::WouldBlock => f.write_str("udp path: the socket buffer is full: not sent"),
            Self::Os(e) => write!(f, "udp path: system call failed with errno {e}"),
        }
    }
}

impl core::error::Error for UdpError {}

/// A datagram network path (see the [module docs](self) for what it does not
/// promise).
///
/// # Examples
///
/// ```
/// use coresident::path::UdpPath;
/// use coresident::{FlowHeader, NetworkPath};
/// let a: UdpPath<u64> = UdpPath::bind("127.0.0.1:0".parse()?, |_| None, |_| None)?;
/// let at = a.local_addr()?;
/// let mut b: UdpPath<u64> = UdpPath::bind("127.0.0.1:0".parse()?, move |_| Some(at), |_| None)?;
/// b.send(&1, FlowHeader { flow: 1, seq: 0 }, b"x")?;
/// # Ok::<(), Box<dyn core::error::Error>>(())
/// ```
pub struct UdpPath<K> {
    socket: UdpSocket,
    resolve: Resolve<K>,
    source: Box<dyn FnMut(SocketAddr) -> Option<K> + Send>,
    buf: Vec<u8>,
    /// A datagram the inbox said `Later` to (offered again first).
    pending: Option<(K, FlowHeader, Vec<u8>)>,
    /// Datagrams dropped: malformed, of unknown source, or refused.
    dropped: u64,
}

impl<K> fmt::Debug for UdpPath<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UdpPath")
            .field("socket", &self.socket)
            .field("dropped", &self.dropped)
            .finish_non_exhaustive()
    }
}

impl<K: Copy + fmt::Debug> UdpPath<K> {
    /// A path on a socket bound to `addr`: `resolve` gives each destination's address,
    /// `source` the key a datagram's source address stands for (`None`: dropped).
    ///
    /// # Errors
    ///
    /// The bind's.
    pub fn bind(
        addr: SocketAddr,
        resolve: impl FnMut(&K) -> Option<SocketAddr> + Send + 'static,
        source: impl FnMut(SocketAddr) -> Option<K> + Send + 'static,
    ) -> io::Result<Self> {
        let socket = UdpSocket::bind(addr)?;
        socket.set_nonblocking(true)?;
        Ok(Self {
            socket,
            resolve: Box::new(resolve),
            source: Box::new(source),
            buf: std::vec![0; 65_536],
            pending: None,
            dropped: 0,
        })
    }

    /// The bound address.
    ///
    /// # Errors
    ///
    /// The socket's.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Datagrams dropped on receipt: malformed, of unknown source, or refused.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

impl<K: Copy + fmt::Debug> NetworkPath<K> for UdpPath<K> {
    type Error = UdpError;

    fn send(&mut self, peer: &K, header: FlowHeader, payload: &[u8]) -> Result<(), UdpError> {
        if payload.len() > MAX_UDP_PAYLOAD {
            return Err(UdpError::TooLarge { len: payload.len() });
        }
        let to = (self.resolve)(peer).ok_or(UdpError::NoRoute)?;
        let mut d = Vec::with_capacity(FLOW_HEADER_LEN + payload.len());
        d.extend_from_slice(&header.encode());
        d.extend_from_slice(payload);
        match self.socket.send_to(&d, to) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(UdpError::WouldBlock),
            Err(e) => Err(UdpError::Os(e.raw_os_error().unwrap_or(0))),
        }
    }

    fn recv(&mut self, inbox: &mut dyn Inbox<K>) -> Result<usize, UdpError> {
        let mut n = 0;
        if let Some((k, h, p)) = self.pending.take() {
            match inbox.offer(&k, h, &p) {
                Offered::Later => {
                    self.pending = Some((k, h, p));
                    return Ok(0);
                }
                Offered::Refused => self.dropped += 1,
                Offered::Taken => {}
            }
            n += 1;
        }
        loop {
            let (len, from) = match self.socket.recv_from(&mut self.buf) {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(UdpError::Os(e.raw_os_error().unwrap_or(0))),
            };
            let d = &self.buf[..len];
            let (Some(k), Some(h)) = ((self.source)(from), FlowHeader::decode(d)) else {
                self.dropped += 1;
                tracing::debug!(source = %from, "udp path: datagram of unknown source or malformed, dropped");
                continue;
            };
            n += 1;
            match inbox.offer(&k, h, &d[FLOW_HEADER_LEN..]) {
                Offered::Taken => {}
                Offered::Refused => self.dropped += 1,
                Offered::Later => {
                    self.pending = Some((k, h, d[FLOW_HEADER_LEN..].to_vec()));
                    return Ok(n);
                }
            }
        }
    }

    fn wait_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.socket.as_fd())
    }
}
