//! Request path normalisation (RFC 3986 §6.2.2): percent-encoded unreserved characters
//! are decoded, remaining escapes upper-cased, `//` collapsed and dot-segments resolved.
//! An encoded `/` (`%2F`) stays encoded (unless `server.path.encoded_slash` says
//! otherwise), so it can never create a segment boundary.
//! Routes match the normalised path and it is what goes upstream, so a path can never
//! reach a route it did not match (`/api/public/../admin`).

use std::borrow::Cow;

use percent_encoding::percent_decode;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path climbs above the root")]
    AboveRoot,
    #[error("path has an invalid percent-encoding")]
    BadEscape,
    #[error("path must start with /")]
    NotAbsolute,
    #[error("path contains a NUL byte")]
    Nul,
    #[error("path contains a backslash")]
    Backslash,
    #[error("path has a parameter on a dot segment")]
    DotSegmentParameter,
    #[error("path has a dot segment next to an encoded slash")]
    EncodedSlashDotSegment,
    #[error("path has a dot segment encoded twice")]
    DoubleEncodedDotSegment,
    #[error("path has percent-encoded bytes that are not UTF-8")]
    NotUtf8,
    #[error("path has an encoded slash")]
    EncodedSlash,
}

/// What an encoded slash (`%2F`) in a request path becomes: `server.path.encoded_slash`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EncodedSlash {
    /// The request is refused (400).
    Reject,
    /// It stays `%2F` inside its segment and goes upstream so.
    #[default]
    Keep,
    /// It is a `/`: the path is split (and its dot segments resolved) at it.
    Decode,
}

/// Normalises with encoded slashes kept (`EncodedSlash::Keep`).
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    normalize_with(path, EncodedSlash::Keep)
}

/// Normalises `path`, refusing the forms that backends resolve differently from the
/// route match: NUL, a backslash (raw or `%5C`), a parameter on a dot segment (`..;`),
/// a dot segment beside an encoded slash (`..%2F`), a dot segment encoded twice
/// (`%252e%252e`), percent-encoded bytes that are not UTF-8 (the overlong `%C0%AE`).
pub fn normalize_with(path: &str, slash: EncodedSlash) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if !needs_work(path) {
        return Ok(Cow::Borrowed(path));
    }
    if path.contains('\\') {
        return Err(PathError::Backslash);
    }
    let slashes_decoded;
    let path = match slash {
        EncodedSlash::Keep => path,
        EncodedSlash::Reject if has_encoded_slash(path) => return Err(PathError::EncodedSlash),
        EncodedSlash::Reject => path,
        EncodedSlash::Decode => {
            slashes_decoded = path.replace("%2F", "/").replace("%2f", "/");
            slashes_decoded.as_str()
        }
    };
    let mut segments: Vec<String> = Vec::new();
    let mut trailing_slash = path.ends_with('/');
    for raw in path[1..].split('/') {
        refuse_hostile(raw)?;
        let segment = decode_unreserved(raw)?;
        match segment.as_str() {
            "" => {}
            "." => {}
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
            }
            _ => segments.push(segment),
        }
    }
    if let Some(last) = path.rsplit('/').next() {
        let last = decode_unreserved(last)?;
        if last == "." || last == ".." {
            trailing_slash = true;
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

fn needs_work(path: &str) -> bool {
    let bytes = path.as_bytes();
    bytes.contains(&b'%')
        || bytes.contains(&b'\\')
        || bytes.windows(2).any(|w| w == b"//" || w == b"/.")
}

fn has_encoded_slash(path: &str) -> bool {
    path.as_bytes()
        .windows(3)
        .any(|w| w[0] == b'%' && w[1] == b'2' && w[2].eq_ignore_ascii_case(&b'f'))
}

fn is_dot_segment(text: &str) -> bool {
    text == "." || text == ".."
}

/// The checks of one raw segment (between slashes, still encoded).
fn refuse_hostile(raw: &str) -> Result<(), PathError> {
    if !raw.contains(['%', ';']) {
        return Ok(());
    }
    let decoded: Cow<'_, [u8]> = percent_decode(raw.as_bytes()).into();
    if decoded.contains(&0) {
        return Err(PathError::Nul);
    }
    if decoded.contains(&b'\\') {
        return Err(PathError::Backslash);
    }
    let text = std::str::from_utf8(&decoded).map_err(|_| PathError::NotUtf8)?;
    if text.contains(';') && text.split(';').next().is_some_and(is_dot_segment) {
        return Err(PathError::DotSegmentParameter);
    }
    if text.contains('/') && text.split('/').any(is_dot_segment) {
        return Err(PathError::EncodedSlashDotSegment);
    }
    if text.contains('%') {
        let twice: Cow<'_, [u8]> = percent_decode(text.as_bytes()).into();
        let twice = String::from_utf8_lossy(&twice);
        if twice.split(['/', ';', '\\']).any(is_dot_segment) {
            return Err(PathError::DoubleEncodedDotSegment);
        }
    }
    Ok(())
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn decode_unreserved(segment: &str) -> Result<String, PathError> {
    let bytes = segment.as_bytes();
    let mut out = String::with_capacity(segment.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(PathError::BadEscape);
            };
            let value = h * 16 + l;
            if is_unreserved(value) {
                out.push(value as char);
            } else {
                out.push('%');
                out.push(bytes[i + 1].to_ascii_uppercase() as char);
                out.push(bytes[i + 2].to_ascii_uppercase() as char);
            }
            i += 3;
        } else {
            // Characters outside ASCII (the URI parser hands over valid UTF-8) are kept
            // as they are, byte for byte.
            let Some(ch) = segment[i..].chars().next() else {
                break;
            };
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Result<String, PathError> {
        normalize(p).map(|c| c.into_owned())
    }

    #[test]
    fn untouched_paths_are_borrowed() {
        assert!(matches!(normalize("/api/users/7"), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn dot_segments_and_slashes() {
        assert_eq!(n("/api/public/../admin").unwrap(), "/api/admin");
        assert_eq!(n("/api//users///7").unwrap(), "/api/users/7");
        assert_eq!(n("/a/./b/.").unwrap(), "/a/b/");
        assert_eq!(n("/a/b/..").unwrap(), "/a/");
        assert_eq!(n("/a/").unwrap(), "/a/");
        assert_eq!(n("//").unwrap(), "/");
    }

    #[test]
    fn escapes() {
        assert_eq!(n("/%61pi/%7Euser").unwrap(), "/api/~user");
        assert_eq!(n("/a%2fb").unwrap(), "/a%2Fb");
        assert_eq!(n("/a/%2e%2e/b").unwrap(), "/b");
        assert_eq!(n("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(n("/a%2"), Err(PathError::BadEscape));
    }

    #[test]
    fn forms_backends_resolve_differently_are_refused() {
        for (path, error) in [
            ("/api/users/..;/admin", PathError::DotSegmentParameter),
            ("/api/users/.;x/admin", PathError::DotSegmentParameter),
            ("/api/users/%2e%2e;/admin", PathError::DotSegmentParameter),
            ("/api\\..\\admin", PathError::Backslash),
            ("/api/%5C../admin", PathError::Backslash),
            ("/api/%5c", PathError::Backslash),
            ("/api/..%2Fadmin", PathError::EncodedSlashDotSegment),
            ("/api/x%2F..", PathError::EncodedSlashDotSegment),
            ("/api/%2e%2e%2fadmin", PathError::EncodedSlashDotSegment),
            ("/api/a%00b", PathError::Nul),
            ("/api/%252e%252e/admin", PathError::DoubleEncodedDotSegment),
            ("/api/%252E./admin", PathError::DoubleEncodedDotSegment),
            ("/api/%C0%AE%C0%AE/admin", PathError::NotUtf8),
            ("/api/%E9t%E9", PathError::NotUtf8),
        ] {
            assert_eq!(n(path), Err(error), "{path}");
        }
        // What stays legal.
        assert_eq!(n("/a;jsessionid=1/b").unwrap(), "/a;jsessionid=1/b");
        assert_eq!(n("/caf%C3%A9").unwrap(), "/caf%C3%A9");
        assert_eq!(n("/a%2Fb").unwrap(), "/a%2Fb");
        assert_eq!(n("/a%25b").unwrap(), "/a%25b");
    }

    #[test]
    fn encoded_slash_policies() {
        let with = |p: &str, s| normalize_with(p, s).map(Cow::into_owned);
        assert_eq!(with("/a%2Fb", EncodedSlash::Keep).unwrap(), "/a%2Fb");
        assert_eq!(
            with("/a%2fb", EncodedSlash::Reject),
            Err(PathError::EncodedSlash)
        );
        assert_eq!(with("/a%2Fb/../c", EncodedSlash::Decode).unwrap(), "/a/c");
    }

    #[test]
    fn non_ascii_paths_keep_their_utf8() {
        assert_eq!(n("/api//café").unwrap(), "/api/café");
        assert_eq!(n("/api/./日本").unwrap(), "/api/日本");
    }

    #[test]
    fn climbing_above_root_is_refused() {
        assert_eq!(n("/.."), Err(PathError::AboveRoot));
        assert_eq!(n("/a/../../etc/passwd"), Err(PathError::AboveRoot));
        assert_eq!(n("/%2e%2e/x"), Err(PathError::AboveRoot));
    }
}
