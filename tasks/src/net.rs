//! Listening sockets of the HTTP servers.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

/// A TCP listener for an HTTP server, with TCP_NODELAY, which Linux hands on
/// to every accepted connection: without it, the last small chunk of a
/// streamed answer (the `]` of a listing) waits for the client's delayed ACK,
/// 40 ms, under Nagle's algorithm. Address reuse as `TcpListener::bind` sets
/// it; a backlog of 1,024 for bursts of new connections.
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_have_no_nagle_delay() {
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(accepted.nodelay().unwrap(), "TCP_NODELAY inherited from the listener");
        drop(client);
    }
}
