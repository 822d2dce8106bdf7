//! rayosd: the VM supervisor. Owns the registry, the lifecycle state machine,
//! policy, and the HTTP/JSON control API on a unix socket.
