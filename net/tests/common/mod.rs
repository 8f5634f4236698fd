//! Shared helpers: a private registry per test, a seeded generator, a checksum.
#![allow(dead_code)]

use coresident_net::{Builder, HostRegistry};
use std::path::PathBuf;

/// The library's events on stderr when `CORESIDENT_TEST_LOG` is set (`cargo test --
/// --nocapture` shows them per test).
pub fn log() {
    if std::env::var_os("CORESIDENT_TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_max_level(tracing::Level::DEBUG)
            .try_init();
    }
}

/// A builder whose host registry lives in a fresh directory of its own.
pub fn builder(name: &str) -> (Builder, PathBuf) {
    log();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("net-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut perms = std::fs::metadata(&dir).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o700);
    std::fs::set_permissions(&dir, perms).unwrap();
    (
        Builder::new().discovery(HostRegistry::at(dir.join("reg"))),
        dir,
    )
}

/// xorshift64*: the same bytes on both sides from a seed.
#[derive(Clone, Debug)]
pub struct Gen(pub u64);

impl Gen {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }

    /// A size from 1 to `max`, skewed small (log-uniform).
    pub fn size(&mut self, max: usize) -> usize {
        let bits = (self.next() % (usize::BITS - max.leading_zeros()) as u64) as u32;
        let hi = (1usize << bits).min(max);
        1 + (self.next() as usize) % hi
    }
}

/// A byte stream generator: byte `i` of stream `seed` is a function of both, so a
/// receiver checks every byte where it lands (a missing, duplicated or reordered byte
/// shows at once, with its offset).
#[derive(Clone, Debug)]
pub struct Pattern {
    seed: u64,
    off: u64,
    block: [u8; 8],
}

impl Pattern {
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            off: 0,
            block: [0; 8],
        }
    }

    fn block_at(seed: u64, i: u64) -> [u8; 8] {
        let mut x = seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        x ^= x >> 31;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x ^= x >> 27;
        x.to_le_bytes()
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for b in buf.iter_mut() {
            if self.off % 8 == 0 {
                self.block = Self::block_at(self.seed, self.off / 8);
            }
            *b = self.block[(self.off % 8) as usize];
            self.off += 1;
        }
    }

    /// Checks `buf` as the next bytes; the offset of the first wrong byte.
    pub fn check(&mut self, buf: &[u8]) -> Result<(), u64> {
        for &b in buf {
            if self.off % 8 == 0 {
                self.block = Self::block_at(self.seed, self.off / 8);
            }
            if b != self.block[(self.off % 8) as usize] {
                return Err(self.off);
            }
            self.off += 1;
        }
        Ok(())
    }

    pub fn offset(&self) -> u64 {
        self.off
    }
}
