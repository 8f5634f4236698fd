//! Per-channel counters.

/// What a channel did. Plain counters: a channel has one owner, so there is nothing to
/// synchronise; read them with [`Channel::stats`](crate::Channel::stats).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages sent (written into the ring).
    pub sent_messages: u64,
    /// Payload bytes sent.
    pub sent_bytes: u64,
    /// Messages received.
    pub received_messages: u64,
    /// Payload bytes received.
    pub received_bytes: u64,
    /// Batches made visible to the peer (one index publish each).
    pub publishes: u64,
    /// Doorbells rung (data for the peer, or space it waited for).
    pub doorbells_rung: u64,
    /// Publishes and releases that needed no doorbell: the peer was not waiting.
    pub doorbells_suppressed: u64,
    /// Times this side slept on its doorbell and was woken by it.
    pub wakeups: u64,
    /// Wake-ups after which there was still nothing to do (doorbells are hints).
    pub spurious_wakeups: u64,
    /// Blocking calls whose spin found the data (or space) within the budget: no
    /// sleep, no doorbell.
    pub spins_won: u64,
    /// Blocking calls whose spin budget ran out before they slept. On one shared core
    /// these are pure loss (the peer could not run meanwhile); the adaptive budget
    /// keeps them rare there.
    pub spins_expired: u64,
    /// Times the channel was given up for the network path.
    pub fallbacks: u64,
    /// Messages handed back for the network path after a fallback.
    pub resent_messages: u64,
    /// Times the shared memory was found corrupted.
    pub corruptions: u64,
}

impl Stats {
    /// Doorbells per message sent or received: the study's notification cost.
    pub fn doorbells_per_message(&self) -> f64 {
        let msgs = self.sent_messages + self.received_messages;
        if msgs == 0 {
            0.0
        } else {
            self.doorbells_rung as f64 / msgs as f64
        }
    }
}
