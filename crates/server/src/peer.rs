//! `PeerAddr`: the client's address, for logs and per-address limits, over
//! plain TCP or TLS. The accept loop puts it in every request's extensions
//! as `ConnectInfo<PeerAddr>`.

use std::net::SocketAddr;

#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

impl std::fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}
