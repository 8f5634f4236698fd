//! What the two domains say to each other, `core` only and without
//! allocation: the XenStore wire format ([`xs_wire`]), the channel's
//! rendezvous bytes and page layout ([`crxg`]), and the XenStore keys of
//! the rendezvous ([`keys`]). Every parser here takes bytes a peer wrote
//! and returns a value or a typed error, never a panic.

pub mod crxg;
pub mod keys;
pub mod xs_wire;
