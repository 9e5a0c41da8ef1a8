use super::*;
use tokio::io::AsyncReadExt;

/// Yields its chunks one read at a time, then the end.
struct Chunks(std::collections::VecDeque<Vec<u8>>);

impl AsyncRead for Chunks {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(chunk) = self.get_mut().0.pop_front() {
            buf.put_slice(&chunk);
        }
        Poll::Ready(Ok(()))
    }
}

fn reader(chunks: &[&[u8]], limit: usize) -> (RequestLines<Chunks>, Arc<Framing>) {
    let framing = Arc::new(Framing::default());
    let chunks = Chunks(chunks.iter().map(|c| c.to_vec()).collect());
    (RequestLines::new(chunks, framing.clone(), limit), framing)
}

/// Reads one hyper-sized read at a time; `between` runs after each (the service).
async fn read_all(r: &mut RequestLines<Chunks>, mut between: impl FnMut(&[u8])) -> Vec<u8> {
    let mut all = Vec::new();
    loop {
        // After a refused head nothing more is read: the next read would wait forever.
        if r.phase == Phase::Closed && r.out.is_empty() {
            return all;
        }
        let mut buf = [0u8; 8192];
        let n = r.read(&mut buf).await.unwrap();
        if n == 0 {
            return all;
        }
        all.extend_from_slice(&buf[..n]);
        between(&all);
    }
}

#[tokio::test]
async fn a_higher_minor_version_reads_as_1_1_on_every_request() {
    let (mut r, framing) = reader(
        &[
            b"GET /a HTTP/1.2\r\nHost: x\r\n\r\n",
            b"POST /b HTTP/1.9\r\nHost: x\r\nContent-Length: 10\r\n\r\nHTTP/",
            b"1.2\r\nGET /c HTTP/1.3\r\n\r\n",
        ],
        100,
    );
    let mut told = 0;
    let got = read_all(&mut r, |all| {
        // The service sees a request once its head is in: GET, POST with 5, GET.
        let heads = all.windows(4).filter(|w| w == b"\r\n\r\n").count();
        while told < heads {
            framing.record(Some(if told == 1 { 10 } else { 0 }));
            told += 1;
        }
    })
    .await;
    let got = String::from_utf8(got).unwrap();
    assert_eq!(
        got,
        "GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nHTTP/1.2\r\nGET /c HTTP/1.1\r\n\r\n",
        "the body is untouched"
    );
}

#[tokio::test]
async fn other_versions_and_targets_are_left_alone() {
    for line in [
        &b"GET /HTTP/1.2 HTTP/1.0\r\n\r\n"[..],
        b"GET / HTTP/2.0\r\n\r\n",
        b"GET / HTTP/1.22\r\n\r\n",
        b"GET / http/1.2\r\n\r\n",
    ] {
        let (mut r, _) = reader(&[line], 100);
        assert_eq!(read_all(&mut r, |_| {}).await, line);
    }
}

#[tokio::test]
async fn a_line_over_the_limit_becomes_the_stand_in_and_the_request_is_marked() {
    let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(200));
    // Whole in one read, and split across many.
    let whole = format!("{long}Host: x\r\n\r\nGET /next HTTP/1.1\r\n\r\n");
    let bytes = whole.as_bytes();
    let pieces: Vec<&[u8]> = bytes.chunks(7).collect();
    for chunks in [vec![bytes], pieces] {
        let (mut r, framing) = reader(&chunks, 100);
        let got = read_all(&mut r, |_| {}).await;
        assert_eq!(
            got, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            "nothing after the head"
        );
        assert!(
            framing.record(Some(0)),
            "the first request is the refused one"
        );
    }
}

#[tokio::test]
async fn a_line_within_the_limit_split_across_reads_is_gathered() {
    let (mut r, framing) = reader(&[b"GE", b"T /x HT", b"TP/1.2\r", b"\nHost: x\r\n\r\n"], 100);
    let got = read_all(&mut r, |_| {}).await;
    assert_eq!(got, b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(!framing.record(Some(0)));
}

#[tokio::test]
async fn unknown_framing_stops_the_reader() {
    // A chunked body: the next request's version is left to hyper.
    let (mut r, framing) = reader(
        &[
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"0\r\n\r\nGET / HTTP/1.2\r\n\r\n",
        ],
        100,
    );
    let mut told = false;
    let got = read_all(&mut r, |_| {
        if !told {
            framing.record(None);
            told = true;
        }
    })
    .await;
    assert!(got.ends_with(b"GET / HTTP/1.2\r\n\r\n"));
    // A pipelined request read before the service saw the one before it.
    let (mut r, framing) = reader(&[b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.2\r\n\r\n"], 100);
    let got = read_all(&mut r, |_| {}).await;
    framing.record(Some(0));
    assert!(got.ends_with(b"GET /b HTTP/1.2\r\n\r\n"));
    // The HTTP/2 preface.
    let (mut r, _) = reader(
        &[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"GET / HTTP/1.2\r\n"],
        10,
    );
    assert!(read_all(&mut r, |_| {}).await.ends_with(b"HTTP/1.2\r\n"));
}

#[test]
fn head_ends_at_the_first_empty_line_across_reads() {
    assert_eq!(head_end(b"Host: x\r\n\r\nrest", 0), (11, true, 0));
    assert_eq!(head_end(b"\n", 1), (1, true, 0));
    assert_eq!(head_end(b"\r", 1), (1, false, 2));
    assert_eq!(head_end(b"\n", 2), (1, true, 0));
    assert_eq!(head_end(b"Host: x\r\n", 1), (9, false, 1));
    assert_eq!(head_end(b"A: b\n\n", 1), (6, true, 0));
}
