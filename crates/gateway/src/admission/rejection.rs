//! Why a client was turned away, as the metrics count it (a leaf: both admission and the
//! metrics name it).

/// Why a client was turned away: the `reason` label of `roomcast_connections_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// `Origin` not in `--allowed-origins`.
    Origin,
    /// The node holds `--max-connections` already.
    Capacity,
    /// Over `--max-handshake-rate`.
    HandshakeRate,
    /// Over `--max-conns-per-ip`.
    IpLimit,
    /// No valid token.
    Auth,
    /// Over `--max-conns-per-user`.
    UserLimit,
    /// `accept` failed (out of descriptors).
    AcceptError,
    /// The app's connect proxy refused, or could not answer under `--connect-proxy-fail closed`.
    Proxy,
}

impl Rejection {
    pub const ALL: [Rejection; 8] = [
        Rejection::IpLimit,
        Rejection::UserLimit,
        Rejection::Auth,
        Rejection::Origin,
        Rejection::Capacity,
        Rejection::HandshakeRate,
        Rejection::AcceptError,
        Rejection::Proxy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Origin => "origin",
            Rejection::Capacity => "capacity",
            Rejection::HandshakeRate => "handshake_rate",
            Rejection::IpLimit => "ip_limit",
            Rejection::Auth => "auth",
            Rejection::UserLimit => "user_limit",
            Rejection::AcceptError => "accept_error",
            Rejection::Proxy => "proxy",
        }
    }
}
