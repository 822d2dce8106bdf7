//! The control API of rayosd: the request and response types shared by the
//! daemon and its clients ([`types`]), the HTTP/1.1 wire format both sides
//! speak over a unix socket ([`http`]), and the blocking client `rayos vm`
//! uses ([`client`]); the agent bridge's bodies are in [`agent`].
//!
//! The API is specified in `docs/api/openapi.yaml`; these types are its
//! implementation and must stay in step with it.

#[macro_use]
pub mod types;
pub mod agent;
pub mod client;
pub mod http;
pub mod mcp;

pub use agent::*;
pub use client::{Client, ClientError};
pub use types::*;

/// Where `rayos vm` looks for the daemon when neither `--socket` nor
/// `$RAYOS_SOCKET` says otherwise.
pub const DEFAULT_SOCKET: &str = rayos_base::paths::API_SOCKET;

/// The environment variable that overrides [`DEFAULT_SOCKET`] for clients.
pub const SOCKET_ENV: &str = "RAYOS_SOCKET";
