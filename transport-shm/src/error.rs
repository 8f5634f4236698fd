//! The one error type shared by every module: a failed system call.

use core::fmt;

/// A system call failed.
///
/// Carries the name of the operation and the raw `errno`, so the value stays small and
/// `Copy` and does not expose `rustix` types in the public API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SysError {
    /// The operation that failed, e.g. `"memfd_create"`.
    pub op: &'static str,
    /// The raw OS error number (`errno`).
    pub errno: i32,
}

impl SysError {
    /// Wraps a `rustix` error.
    pub(crate) fn new(op: &'static str, errno: rustix::io::Errno) -> Self {
        Self {
            op,
            errno: errno.raw_os_error(),
        }
    }

    /// Wraps a `std::io::Error` (an error without an OS code becomes `EIO`).
    pub(crate) fn from_io(op: &'static str, err: &std::io::Error) -> Self {
        Self {
            op,
            errno: err
                .raw_os_error()
                .unwrap_or(rustix::io::Errno::IO.raw_os_error()),
        }
    }

    /// The error as a `std::io::Error`.
    pub fn to_io_error(self) -> std::io::Error {
        std::io::Error::from_raw_os_error(self.errno)
    }
}

impl fmt::Display for SysError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed: {}", self.op, self.to_io_error())
    }
}

impl std::error::Error for SysError {}

/// Shorthand: turns a `rustix` result into one with a [`SysError`] naming `op`.
pub(crate) trait SysContext<T> {
    /// Names the operation that failed.
    fn sys(self, op: &'static str) -> Result<T, SysError>;
}

impl<T> SysContext<T> for rustix::io::Result<T> {
    fn sys(self, op: &'static str) -> Result<T, SysError> {
        self.map_err(|e| SysError::new(op, e))
    }
}
