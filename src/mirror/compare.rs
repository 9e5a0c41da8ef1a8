//! How a mirror's answer is compared with the primary's: status (exact or by class),
//! chosen headers by value, and bodies — JSON structurally (key order ignored, numbers
//! as numbers, `json_ignore` paths removed), anything else by SHA-256. The first
//! difference found is the verdict; its description names where it is (a JSON path or a
//! header name) and both values truncated, never a whole body or a credential.

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde_json::Value;

use crate::config::{CompareConfig, StatusCompare};

/// Longest value text kept in a mismatch sample.
const VALUE_CHARS: usize = 80;

/// Headers whose values are never shown, even when compared.
const SECRET_HEADERS: [HeaderName; 4] = [
    header::AUTHORIZATION,
    header::PROXY_AUTHORIZATION,
    header::COOKIE,
    header::SET_COOKIE,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusRule {
    Exact,
    Class,
    Ignore,
}

#[derive(Debug)]
pub struct Compare {
    status: StatusRule,
    headers: Vec<HeaderName>,
    ignore: Vec<Vec<String>>,
    pub sample: usize,
}

/// One side's answer, as far as the comparison needs it.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    /// The compared headers' values, in `Compare::headers` order.
    pub headers: Vec<Option<HeaderValue>>,
    pub json: bool,
    /// `None`: above the compare limit (the body is not compared).
    pub body: Option<Bytes>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Status,
    Header,
    Body,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Status, Kind::Header, Kind::Body];
}

/// The first difference between two answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    pub kind: Kind,
    /// The JSON path (`items[2].price`, empty for the root) or the header name.
    pub at: Option<String>,
    pub primary: Option<String>,
    pub mirror: Option<String>,
}

pub fn status_rule(config: &StatusCompare) -> Result<StatusRule, String> {
    match config {
        StatusCompare::Exact(true) => Ok(StatusRule::Exact),
        StatusCompare::Exact(false) => Ok(StatusRule::Ignore),
        StatusCompare::Named(name) if name == "class" => Ok(StatusRule::Class),
        StatusCompare::Named(name) => Err(format!(
            "invalid status rule {name:?} (use true, false or class)"
        )),
    }
}

/// A `json_ignore` entry as path segments: `meta.generated_at`, `items.id` (every
/// element's), `items.0.id` (the first element's), `*` (any key or element).
pub fn ignore_path(text: &str) -> Result<Vec<String>, String> {
    let segments: Vec<String> = text
        .replace('[', ".")
        .replace(']', "")
        .split('.')
        .map(str::to_string)
        .collect();
    if text.trim().is_empty() || segments.iter().any(|s| s.is_empty()) {
        return Err(format!(
            "invalid JSON path {text:?} (dotted keys such as meta.generated_at)"
        ));
    }
    Ok(segments)
}

/// Checks `compare:`; each problem names its field below it.
pub fn validate(config: &CompareConfig) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    if let Err(e) = status_rule(&config.status) {
        problems.push(("status".into(), e));
    }
    for (i, name) in config.headers.iter().enumerate() {
        if HeaderName::from_bytes(name.as_bytes()).is_err() {
            problems.push((
                format!("headers[{i}]"),
                format!("invalid header name {name:?}"),
            ));
        }
    }
    for (i, path) in config.json_ignore.iter().enumerate() {
        if let Err(e) = ignore_path(path) {
            problems.push((format!("json_ignore[{i}]"), e));
        }
    }
    if !(1..=1000).contains(&config.sample) {
        problems.push(("sample".into(), "must be between 1 and 1000".into()));
    }
    problems
}

impl Compare {
    pub fn build(config: &CompareConfig) -> Result<Compare, (String, String)> {
        if let Some(problem) = validate(config).into_iter().next() {
            return Err(problem);
        }
        Ok(Compare {
            status: status_rule(&config.status).map_err(|e| ("status".to_string(), e))?,
            headers: config
                .headers
                .iter()
                .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
                .collect(),
            ignore: config
                .json_ignore
                .iter()
                .filter_map(|p| ignore_path(p).ok())
                .collect(),
            sample: config.sample as usize,
        })
    }

    /// What the comparison keeps of a response head.
    pub fn answer(&self, status: StatusCode, headers: &HeaderMap, body: Option<Bytes>) -> Answer {
        Answer {
            status,
            headers: self
                .headers
                .iter()
                .map(|h| headers.get(h).cloned())
                .collect(),
            json: is_json(headers),
            body,
        }
    }

    /// The first difference, or `None` when the answers match.
    pub fn compare(&self, primary: &Answer, mirror: &Answer) -> Option<Difference> {
        let status_differs = match self.status {
            StatusRule::Exact => primary.status != mirror.status,
            StatusRule::Class => primary.status.as_u16() / 100 != mirror.status.as_u16() / 100,
            StatusRule::Ignore => false,
        };
        if status_differs {
            return Some(Difference {
                kind: Kind::Status,
                at: None,
                primary: Some(primary.status.as_u16().to_string()),
                mirror: Some(mirror.status.as_u16().to_string()),
            });
        }
        for (i, name) in self.headers.iter().enumerate() {
            let (a, b) = (&primary.headers[i], &mirror.headers[i]);
            if a != b {
                let shown = |v: &Option<HeaderValue>| {
                    v.as_ref().map(|v| {
                        if SECRET_HEADERS.contains(name) {
                            "(redacted)".to_string()
                        } else {
                            truncate(&String::from_utf8_lossy(v.as_bytes()))
                        }
                    })
                };
                return Some(Difference {
                    kind: Kind::Header,
                    at: Some(name.as_str().to_string()),
                    primary: shown(a),
                    mirror: shown(b),
                });
            }
        }
        let (Some(a), Some(b)) = (&primary.body, &mirror.body) else {
            return None;
        };
        // The common case, and the same verdict whatever the type: no parsing.
        if a == b {
            return None;
        }
        if primary.json && mirror.json {
            if let (Ok(mut a), Ok(mut b)) = (
                serde_json::from_slice::<Value>(a),
                serde_json::from_slice::<Value>(b),
            ) {
                for path in &self.ignore {
                    remove(&mut a, path);
                    remove(&mut b, path);
                }
                return first_difference(&a, &b).map(|found| Difference {
                    kind: Kind::Body,
                    at: Some(found.path()),
                    primary: found.primary,
                    mirror: found.mirror,
                });
            }
        }
        let (ha, hb) = (digest(a), digest(b));
        (ha != hb).then_some(Difference {
            kind: Kind::Body,
            at: None,
            primary: Some(ha),
            mirror: Some(hb),
        })
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(mime) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.as_bytes().split(|b| *b == b';').next())
        .map(<[u8]>::trim_ascii)
    else {
        return false;
    };
    mime.eq_ignore_ascii_case(b"application/json")
        || (mime.len() > 5 && mime[mime.len() - 5..].eq_ignore_ascii_case(b"+json"))
}

/// `sha256:` and the first 16 hex digits: enough to tell two bodies apart in a sample.
fn digest(body: &[u8]) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, body);
    let mut out = String::from("sha256:");
    for b in &d.as_ref()[..8] {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

fn truncate(text: &str) -> String {
    match text.char_indices().nth(VALUE_CHARS) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

fn shown(value: &Value) -> String {
    truncate(&value.to_string())
}

/// Removes the value at `path` wherever it is; an array takes a numeric segment as an
/// index and applies any other segment to each element.
fn remove(value: &mut Value, path: &[String]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    match value {
        Value::Object(map) if first == "*" => {
            if rest.is_empty() {
                map.clear();
            } else {
                map.values_mut().for_each(|v| remove(v, rest));
            }
        }
        Value::Object(map) => {
            if rest.is_empty() {
                map.remove(first.as_str());
            } else if let Some(v) = map.get_mut(first.as_str()) {
                remove(v, rest);
            }
        }
        Value::Array(items) => match first.parse::<usize>() {
            // Null rather than removed, so the next elements keep their indexes.
            Ok(i) if rest.is_empty() => {
                if let Some(v) = items.get_mut(i) {
                    *v = Value::Null;
                }
            }
            Ok(i) => {
                if let Some(v) = items.get_mut(i) {
                    remove(v, rest);
                }
            }
            Err(_) if first == "*" && rest.is_empty() => items.clear(),
            Err(_) if first == "*" => items.iter_mut().for_each(|v| remove(v, rest)),
            Err(_) => items.iter_mut().for_each(|v| remove(v, path)),
        },
        _ => {}
    }
}

/// One step of a JSON path.
enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

/// Where two documents first differ. The path is gathered on the way back out, so
/// equal documents cost no allocation.
struct Found<'a> {
    /// Innermost segment first.
    reversed: Vec<Segment<'a>>,
    /// Both values as JSON text (`None`: absent on that side).
    primary: Option<String>,
    mirror: Option<String>,
}

impl Found<'_> {
    /// `order.items[2].price`; empty for the root.
    fn path(&self) -> String {
        let mut out = String::new();
        for segment in self.reversed.iter().rev() {
            match segment {
                Segment::Key(key) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(key);
                }
                Segment::Index(i) => out.push_str(&format!("[{i}]")),
            }
        }
        out
    }
}

/// The first difference between `a` and `b`: object members in key order (the
/// primary's keys, then those only the mirror has), array elements in order.
fn first_difference<'a>(a: &'a Value, b: &'a Value) -> Option<Found<'a>> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => x
            .iter()
            .find_map(|(key, p)| member(Segment::Key(key), Some(p), y.get(key)))
            .or_else(|| {
                y.iter()
                    .filter(|(key, _)| !x.contains_key(*key))
                    .find_map(|(key, m)| member(Segment::Key(key), None, Some(m)))
            }),
        (Value::Array(x), Value::Array(y)) => {
            (0..x.len().max(y.len())).find_map(|i| member(Segment::Index(i), x.get(i), y.get(i)))
        }
        (Value::Number(x), Value::Number(y)) => {
            let same = match (x.as_i64(), y.as_i64(), x.as_u64(), y.as_u64()) {
                (Some(p), Some(m), _, _) => p == m,
                (_, _, Some(p), Some(m)) => p == m,
                _ => x.as_f64() == y.as_f64(),
            };
            (!same).then(|| leaf(Some(a), Some(b)))
        }
        _ => (a != b).then(|| leaf(Some(a), Some(b))),
    }
}

/// Compares one member of an object or array found at `segment`.
fn member<'a>(
    segment: Segment<'a>,
    a: Option<&'a Value>,
    b: Option<&'a Value>,
) -> Option<Found<'a>> {
    let mut found = match (a, b) {
        (Some(a), Some(b)) => first_difference(a, b)?,
        (a, b) => leaf(a, b),
    };
    found.reversed.push(segment);
    Some(found)
}

fn leaf<'a>(a: Option<&Value>, b: Option<&Value>) -> Found<'a> {
    Found {
        reversed: Vec::new(),
        primary: a.map(shown),
        mirror: b.map(shown),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compare(yaml: &str) -> Compare {
        let config: CompareConfig = serde_yaml_ng::from_str(yaml).unwrap();
        Compare::build(&config).unwrap()
    }

    fn json(status: u16, body: &str) -> Answer {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        Answer {
            status: StatusCode::from_u16(status).unwrap(),
            headers: Vec::new(),
            json: is_json(&headers),
            body: Some(Bytes::copy_from_slice(body.as_bytes())),
        }
    }

    #[test]
    fn json_bodies_compare_by_structure() {
        let c = compare("json_ignore: [meta.generated_at, id, items.sku]");
        let same = c.compare(
            &json(
                200,
                r#"{"a": 1, "b": [1, 2.0], "id": 7, "meta": {"generated_at": "x", "v": 1}}"#,
            ),
            &json(
                200,
                r#"{"meta": {"v": 1.0, "generated_at": "y"}, "b": [1.0, 2], "a": 1, "id": 8}"#,
            ),
        );
        assert_eq!(same, None);
        let ignored_in_arrays = c.compare(
            &json(
                200,
                r#"{"items": [{"sku": 1, "n": 2}, {"sku": 3, "n": 4}]}"#,
            ),
            &json(
                200,
                r#"{"items": [{"sku": 9, "n": 2}, {"sku": 8, "n": 4}]}"#,
            ),
        );
        assert_eq!(ignored_in_arrays, None);
        let changed = c
            .compare(
                &json(200, r#"{"items": [{"n": 2}, {"n": 4, "price": 10}]}"#),
                &json(200, r#"{"items": [{"n": 2}, {"n": 4, "price": 12}]}"#),
            )
            .unwrap();
        assert_eq!(changed.kind, Kind::Body);
        assert_eq!(changed.at.as_deref(), Some("items[1].price"));
        assert_eq!(changed.primary.as_deref(), Some("10"));
        assert_eq!(changed.mirror.as_deref(), Some("12"));
        let missing = c
            .compare(
                &json(200, r#"{"a": 1}"#),
                &json(200, r#"{"a": 1, "b": null}"#),
            )
            .unwrap();
        assert_eq!(missing.at.as_deref(), Some("b"));
        assert_eq!(missing.primary, None);
        assert_eq!(missing.mirror.as_deref(), Some("null"));
    }

    #[test]
    fn statuses_compare_exactly_or_by_class() {
        let exact = compare("{}");
        let d = exact.compare(&json(200, "{}"), &json(201, "{}")).unwrap();
        assert_eq!(d.kind, Kind::Status);
        assert_eq!(
            (d.primary.as_deref(), d.mirror.as_deref()),
            (Some("200"), Some("201"))
        );
        let class = compare("status: class");
        assert_eq!(class.compare(&json(200, "{}"), &json(201, "{}")), None);
        assert!(class.compare(&json(200, "{}"), &json(500, "{}")).is_some());
        let off = compare("status: false");
        assert_eq!(off.compare(&json(200, "{}"), &json(500, "{}")), None);
    }

    #[test]
    fn other_bodies_compare_by_hash_and_long_values_are_cut() {
        let c = compare("{}");
        let text = |body: &str| Answer {
            json: false,
            ..json(200, body)
        };
        assert_eq!(c.compare(&text("abc"), &text("abc")), None);
        let d = c.compare(&text("abc"), &text("abd")).unwrap();
        assert!(d.primary.unwrap().starts_with("sha256:"));
        let long = "x".repeat(500);
        let d = c
            .compare(
                &json(200, &format!(r#"{{"a": "{long}"}}"#)),
                &json(200, r#"{"a": "y"}"#),
            )
            .unwrap();
        assert!(d.primary.unwrap().chars().count() <= VALUE_CHARS + 1);
    }

    #[test]
    fn header_values_are_compared_and_secrets_never_shown() {
        let c = compare("headers: [Content-Type, Set-Cookie]");
        let mut a = HeaderMap::new();
        a.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        a.insert(header::SET_COOKIE, HeaderValue::from_static("s=1"));
        let mut b = a.clone();
        b.insert(header::SET_COOKIE, HeaderValue::from_static("s=2"));
        let d = c
            .compare(
                &c.answer(StatusCode::OK, &a, None),
                &c.answer(StatusCode::OK, &b, None),
            )
            .unwrap();
        assert_eq!(d.kind, Kind::Header);
        assert_eq!(d.at.as_deref(), Some("set-cookie"));
        assert_eq!(d.primary.as_deref(), Some("(redacted)"));
        b.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
        let d = c
            .compare(
                &c.answer(StatusCode::OK, &a, None),
                &c.answer(StatusCode::OK, &b, None),
            )
            .unwrap();
        assert_eq!(d.mirror.as_deref(), Some("text/html"));
    }

    #[test]
    fn bad_settings_are_refused_with_their_field() {
        let problems = |yaml: &str| {
            let config: CompareConfig = serde_yaml_ng::from_str(yaml).unwrap();
            validate(&config)
                .into_iter()
                .map(|(f, _)| f)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            problems("{status: exact, headers: [bad name], json_ignore: [a..b], sample: 0}"),
            ["status", "headers[0]", "json_ignore[0]", "sample"]
        );
        assert!(problems("{status: class, json_ignore: [\"items[0].id\"]}").is_empty());
    }
}
