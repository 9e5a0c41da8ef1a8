//! A backend that speaks HTTP/1.1 by hand, for testing how the gateway frames requests
//! and reads responses on its pooled upstream connections: each answer is raw bytes from
//! a script, so tests can send chunked, close-delimited, interim, malformed or truncated
//! responses, and close connections when they choose. It records every request (head and
//! decoded body) and how many connections it accepted.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A request as the backend read it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Request line and headers, header names lower-cased.
    pub head: String,
    pub body: Vec<u8>,
    /// 1 for the first request on its connection, 2 for the second...
    pub nth_on_connection: usize,
}

impl Seen {
    pub fn path(&self) -> &str {
        self.head.split(' ').nth(1).unwrap_or("")
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            (n.eq_ignore_ascii_case(name)).then(|| v.trim().to_string())
        })
    }
}

/// What to do with one request.
pub enum Answer {
    /// Write these bytes and keep the connection open.
    Bytes(Vec<u8>),
    /// Write these bytes, then close the connection.
    BytesThenClose(Vec<u8>),
    /// Close without answering.
    Close,
}

type Script = dyn Fn(&Seen) -> Answer + Send + Sync;

pub struct WireBackend {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for WireBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WireBackend {
    pub async fn start(script: impl Fn(&Seen) -> Answer + Send + Sync + 'static) -> WireBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let script: Arc<Script> = Arc::new(script);
        let task = {
            let (seen, connections) = (seen.clone(), connections.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    connections.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(serve(stream, script.clone(), seen.clone()));
                }
            })
        };
        WireBackend {
            addr,
            seen,
            connections,
            task,
        }
    }

    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

async fn serve(mut stream: TcpStream, script: Arc<Script>, seen: Arc<Mutex<Vec<Seen>>>) {
    let mut buf = Vec::new();
    let mut nth = 0;
    loop {
        let Some(request) = read_request(&mut stream, &mut buf, nth + 1).await else {
            return;
        };
        nth += 1;
        seen.lock().unwrap().push(request.clone());
        match script(&request) {
            Answer::Bytes(bytes) => {
                if stream.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            Answer::BytesThenClose(bytes) => {
                let _ = stream.write_all(&bytes).await;
                return;
            }
            Answer::Close => return,
        }
    }
}

async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 16 * 1024];
    let n = stream.read(&mut chunk).await.ok()?;
    if n == 0 {
        return None;
    }
    buf.extend_from_slice(&chunk[..n]);
    Some(())
}

fn find(buf: &[u8], needle: &[u8]) -> Option<usize> {
    buf.windows(needle.len()).position(|w| w == needle)
}

async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>, nth: usize) -> Option<Seen> {
    let end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i;
        }
        fill(stream, buf).await?;
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end + 4);
    let mut seen = Seen {
        head,
        body: Vec::new(),
        nth_on_connection: nth,
    };
    if seen
        .header("transfer-encoding")
        .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let line_end = loop {
                if let Some(i) = find(buf, b"\r\n") {
                    break i;
                }
                fill(stream, buf).await?;
            };
            let size = usize::from_str_radix(
                String::from_utf8_lossy(&buf[..line_end])
                    .split(';')
                    .next()?
                    .trim(),
                16,
            )
            .ok()?;
            buf.drain(..line_end + 2);
            while buf.len() < size + 2 {
                fill(stream, buf).await?;
            }
            if size == 0 {
                buf.drain(..2);
                break;
            }
            seen.body.extend_from_slice(&buf[..size]);
            buf.drain(..size + 2);
        }
    } else if let Some(length) = seen.header("content-length") {
        let length: usize = length.parse().ok()?;
        while buf.len() < length {
            fill(stream, buf).await?;
        }
        seen.body = buf.drain(..length).collect();
    }
    Some(seen)
}

/// A complete `200 OK` with a Content-Length body.
pub fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}
