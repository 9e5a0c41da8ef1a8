//! Opening a connection to something the gateway calls: TCP (Nagle off, keep-alive
//! probes on), then TLS when the target is configured for it. Proxied requests, health
//! checks and upgrades to an endpoint all open their connections here.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::Authority;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::tls::ClientTls;

const KEEPALIVE_PROBE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect failed: {0}")]
    Connect(io::Error),
    #[error("connect timed out")]
    Timeout,
    /// The TCP connection opened, the TLS handshake did not complete (an untrusted or
    /// expired certificate, a name that does not match, a refused client certificate).
    #[error("TLS handshake failed: {0}")]
    Tls(io::Error),
    #[error("no TLS server name for {0} (set tls.server_name)")]
    NoServerName(String),
    /// `protocol: auto`: the endpoint spoke HTTP/2 before and now chose HTTP/1.1.
    #[error("the endpoint no longer offers HTTP/2 (ALPN)")]
    NoLongerH2,
}

/// A connection to an endpoint, plain or TLS (boxed: a TLS session is large).
#[derive(Debug)]
pub enum UpstreamStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// Opens a connection to `authority`, TCP and TLS handshake both within `timeout`.
pub async fn connect(
    authority: &Authority,
    timeout: Duration,
    tls: Option<&ClientTls>,
) -> Result<UpstreamStream, ConnectError> {
    let open = async {
        let tcp = TcpStream::connect(authority.as_str())
            .await
            .map_err(ConnectError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new().with_time(KEEPALIVE_PROBE);
        let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
        let Some(tls) = tls else {
            return Ok(UpstreamStream::Plain(tcp));
        };
        let name = tls
            .name_for(authority.host())
            .ok_or_else(|| ConnectError::NoServerName(authority.to_string()))?;
        let stream = TlsConnector::from(tls.config.clone())
            .connect(name, tcp)
            .await
            .map_err(ConnectError::Tls)?;
        Ok(UpstreamStream::Tls(Box::new(stream)))
    };
    tokio::time::timeout(timeout, open)
        .await
        .map_err(|_| ConnectError::Timeout)?
}

impl UpstreamStream {
    pub fn is_tls(&self) -> bool {
        matches!(self, UpstreamStream::Tls(_))
    }

    /// Whether the TLS handshake chose HTTP/2 (ALPN `h2`).
    pub fn negotiated_h2(&self) -> bool {
        match self {
            UpstreamStream::Plain(_) => false,
            UpstreamStream::Tls(s) => s.get_ref().1.alpn_protocol() == Some(b"h2"),
        }
    }

    /// Whether written bytes may wait in a buffer until flushed (TLS records); a plain
    /// socket sends on write.
    pub fn buffers_writes(&self) -> bool {
        matches!(self, UpstreamStream::Tls(_))
    }

    /// True when nothing has arrived since the last response: the upstream has not
    /// closed the idle connection nor sent anything unasked. Over TLS a record that
    /// carries no data (a TLS 1.3 session ticket) is taken in and does not count.
    pub fn is_idle(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self {
            UpstreamStream::Plain(stream) => match stream.poll_read_ready(&mut cx) {
                Poll::Pending => true,
                Poll::Ready(Err(_)) => false,
                Poll::Ready(Ok(())) => {
                    let mut probe = [0u8; 1];
                    matches!(stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
                }
            },
            UpstreamStream::Tls(stream) => {
                let mut probe = [0u8; 1];
                let mut buf = ReadBuf::new(&mut probe);
                matches!(
                    Pin::new(stream.as_mut()).poll_read(&mut cx, &mut buf),
                    Poll::Pending
                )
            }
        }
    }
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write(cx, data),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamStream::Plain(s) => s.is_write_vectored(),
            UpstreamStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
