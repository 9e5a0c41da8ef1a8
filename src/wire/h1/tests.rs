use super::response::*;
use super::*;
use crate::wire::body::Body;

fn head(text: &str, method: &Method) -> Result<Option<ResponseHead>, ExchangeError> {
    let mut buf = BytesMut::from(text.as_bytes());
    parse_head(&mut buf, method)
}

#[test]
fn framing_follows_rfc_9112() {
    let (get, head_method) = (Method::GET, Method::HEAD);
    let cases = [
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
            &get,
            Framing::Length(5),
            true,
        ),
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
            &head_method,
            Framing::Empty,
            true,
        ),
        (
            "HTTP/1.1 204 No Content\r\n\r\n",
            &get,
            Framing::Empty,
            true,
        ),
        ("HTTP/1.1 200 OK\r\n\r\n", &get, Framing::UntilClose, false),
        (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
            &get,
            Framing::Chunked,
            true,
        ),
        (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
            &get,
            Framing::Chunked,
            false,
        ),
        (
            "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\n",
            &get,
            Framing::Length(1),
            false,
        ),
        (
            "HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n",
            &get,
            Framing::Length(1),
            false,
        ),
    ];
    for (text, method, framing, reusable) in cases {
        let h = head(text, method).unwrap().unwrap();
        assert_eq!((h.framing, h.reusable), (framing, reusable), "{text:?}");
    }
    for bad in [
        "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
        "garbage\r\n\r\n",
    ] {
        assert!(head(bad, &get).is_err(), "{bad:?}");
    }
    assert!(head("HTTP/1.1 200 OK\r\ncontent-length: 1", &get)
        .unwrap()
        .is_none());
}

#[test]
fn header_values_share_the_head() {
    let h = head(
        "HTTP/1.1 201 Created\r\nX-A: one\r\nx-a: two\r\n\r\nrest",
        &Method::GET,
    )
    .unwrap()
    .unwrap();
    assert_eq!(h.status, StatusCode::CREATED);
    let values: Vec<_> = h.headers.get_all("x-a").iter().collect();
    assert_eq!(values, ["one", "two"]);
}

#[test]
fn chunked_decoding() {
    let mut buf = BytesMut::from(&b"5;ext=1\r\nhello\r\n3\r\nabc\r\n0\r\nx-t: 1\r\n\r\nNEXT"[..]);
    let mut state = Some(Chunk::Size);
    let mut out = Vec::new();
    while let Some(c) = state {
        let (next, data) = decode_chunk(&mut buf, c).unwrap();
        if let Some(d) = &data {
            out.extend_from_slice(d);
        }
        assert!(next != Some(c) || data.is_some(), "no progress");
        state = next;
    }
    assert_eq!(out, b"helloabc");
    assert_eq!(&buf[..], b"NEXT");
    let mut bad = BytesMut::from(&b"zz\r\n"[..]);
    assert!(decode_chunk(&mut bad, Chunk::Size).is_err());
    let mut bad = BytesMut::from(&b"abXY"[..]);
    assert!(decode_chunk(&mut bad, Chunk::DataEnd).is_err());
    let mut huge = BytesMut::from(&b"ffffffffffffffffff\r\n"[..]);
    assert!(decode_chunk(&mut huge, Chunk::Size).is_err());
}

#[test]
fn request_heads() {
    let mut out = Vec::new();
    let mut headers = HeaderMap::new();
    headers.insert("x-a", HeaderValue::from_static("1"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("99"));
    encode_head(
        &mut out,
        &Method::POST,
        &PathAndQuery::from_static("/p?q=1"),
        &Authority::from_static("b:80"),
        &headers,
        None,
        RequestFraming::Length(1234),
    );
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "POST /p?q=1 HTTP/1.1\r\nhost: b:80\r\nx-a: 1\r\ncontent-length: 1234\r\n\r\n"
    );
    let mut hex = Vec::new();
    push_hex(&mut hex, 0x1a2b);
    assert_eq!(hex, b"1a2b");
    assert_eq!(
        request_framing(&Method::GET, &Body::empty()),
        RequestFraming::None
    );
    assert_eq!(
        request_framing(&Method::POST, &Body::empty()),
        RequestFraming::Length(0)
    );
    assert_eq!(
        request_framing(&Method::PUT, &Body::full("abc")),
        RequestFraming::Length(3)
    );
}
