//! Xen's console through `console_io` (`CONSOLEIO_write`): what dom0 sees on
//! the serial line. A release build of Xen refuses it to a domU, which
//! writes its PV console ring instead.

use core::fmt;

use coresident_xen::kernel::hypercall::console_write;

/// Writes to Xen's console.
#[derive(Debug, Clone, Copy, Default)]
pub struct Console;

impl fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        console_write(&crate::hypercalls(), s.as_bytes());
        Ok(())
    }
}

/// `say!("fmt", args..)`: one line on Xen's console (formatted in pieces,
/// no allocation).
#[macro_export]
macro_rules! say {
    ($($t:tt)*) => {{
        use core::fmt::Write as _;
        let _ = writeln!($crate::console::Console, $($t)*);
    }};
}
