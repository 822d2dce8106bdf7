//! QMP: wire types (no I/O) and a small blocking client over a unix socket.
