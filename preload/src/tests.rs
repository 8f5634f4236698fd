//! Unit tests of the socket emulation against the in-process connection.
