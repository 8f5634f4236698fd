//! What the two domains say to each other, `core` only and without
//! allocation: the XenStore wire format ([`xs_wire`]), the channel's
//! rendezvous bytes and page layout ([`crxg`]), and the XenStore keys of
//! the rendezvous ([`keys`]). Every parser here takes bytes a peer wrote
//! and returns a value or a typed error, never a panic.
//!
//! # Examples
//!
//! ```
//! use coresident::ChannelLayout;
//! use coresident_xen::protocol::crxg::{self, CrxgError, Offer};
//!
//! // The offer's bytes for a path other than XenStore, and back.
//! let layout = ChannelLayout::symmetric(4096);
//! let refs: Vec<u32> = (8..8 + crxg::pages_for(layout) as u32).collect();
//! let mut bytes = [0u8; 256];
//! let n = crxg::encode(&Offer { offerer: 3, port: 17, layout, refs: &refs[..] }, &mut bytes)?;
//! let mut room = [0u32; 16];
//! assert_eq!(crxg::parse(3, &bytes[..n], &mut room)?.refs, &refs[..]);
//! # Ok::<(), CrxgError>(())
//! ```

pub mod crxg;
pub mod keys;
pub mod xs_wire;
