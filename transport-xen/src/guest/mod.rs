//! Pieces of a PV guest kernel (`core` only, no allocation): the console
//! ring of its `start_info` ([`console`]). Its XenStore ring client is
//! [`crate::xenstore::ring`].
//!
//! # Examples
//!
//! ```
//! use coresident_xen::guest::console::{ConsoleError, ConsoleRing, Events};
//!
//! struct Port; // the console's event channel, in a kernel
//! impl Events for Port {
//!     fn notify(&mut self) {} // EVTCHNOP_send
//!     fn wait(&mut self) -> bool { false }
//! }
//! let mut page = Box::new([0u32; 1024]); // zeroed: an empty console page
//! // SAFETY: the page outlives the console and is touched by nothing else.
//! let mut con = unsafe { ConsoleRing::new(page.as_mut_ptr().cast(), Port) }?;
//! con.write(b"booted\n")?;
//! # Ok::<(), ConsoleError>(())
//! ```

pub mod console;
