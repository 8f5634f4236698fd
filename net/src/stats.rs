//! Per-stream counters and state, for `Stream::stats` and a status command.

/// Which path a stream's bytes take now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Path {
    /// No session: raw TCP bytes for the life of the connection (the peer does not
    /// speak coresident, is not on this host, or the upgrade at connect time failed).
    #[default]
    Plain,
    /// A session on TCP segments (residency ended, or not yet back).
    Tcp,
    /// A session whose bytes take a ring channel.
    Ring,
}

impl core::fmt::Display for Path {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Plain => "plain",
            Self::Tcp => "tcp",
            Self::Ring => "ring",
        })
    }
}

/// What a stream did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// The path now.
    pub path: Path,
    /// The session's latest channel epoch (0: the one agreed at connect time).
    pub epoch: u32,
    /// Bytes the application wrote (the next byte's offset).
    pub tx_offset: u64,
    /// Bytes the application read (the next byte's offset).
    pub rx_offset: u64,
    /// Bytes written into a ring.
    pub ring_tx_bytes: u64,
    /// Bytes delivered from a ring.
    pub ring_rx_bytes: u64,
    /// Payload bytes written on TCP (segments or plain).
    pub tcp_tx_bytes: u64,
    /// Payload bytes delivered from TCP.
    pub tcp_rx_bytes: u64,
    /// Channels adopted.
    pub upgrades: u64,
    /// Channels given up for TCP.
    pub downgrades: u64,
    /// Upgrades refused or failed (the stream stayed on TCP).
    pub refusals: u64,
    /// Bytes sent again on TCP out of a ring the peer had not consumed.
    pub resent_bytes: u64,
    /// Bytes received twice (a resend of what the ring had delivered) and dropped.
    pub duplicate_bytes: u64,
    /// Doorbells rung for the peer.
    pub doorbells_rung: u64,
    /// Doorbells from the peer noticed.
    pub doorbells_seen: u64,
    /// Times a blocking call slept on the stream's descriptor.
    pub wakeups: u64,
}
