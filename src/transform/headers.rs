//! Header edits: remove, rename, set (replace), add (append), in that order. Template
//! values are rendered against the headers as they were before any edit. Framing and
//! hop-by-hop headers cannot be touched: the gateway owns them, and a transform that
//! changed `Content-Length` or `Transfer-Encoding` would desynchronise the message.

use http::{HeaderMap, HeaderName, HeaderValue};

use super::template::Template;
use crate::config::MessageTransformConfig;
use crate::wire::headers::{owned, Owned};

#[derive(Clone, Debug, Default)]
pub struct HeaderOps {
    remove: Vec<HeaderName>,
    rename: Vec<(HeaderName, HeaderName)>,
    set: Vec<(HeaderName, Template)>,
    add: Vec<(HeaderName, Template)>,
}

/// A problem with one key of a transform: (field under the transform, message).
pub type Problem = (String, String);

fn name(
    field: &str,
    text: &str,
    explicit_set: bool,
    problems: &mut Vec<Problem>,
) -> Option<HeaderName> {
    let Ok(name) = HeaderName::from_bytes(text.as_bytes()) else {
        problems.push((field.to_string(), format!("invalid header name {text:?}")));
        return None;
    };
    // Hop-by-hop and framing headers belong to the gateway; Host and Authorization may be
    // written (a transform that injects a service credential is a common use).
    if matches!(owned(&name), Some(Owned::HopByHop | Owned::Framing)) {
        problems.push((
            field.to_string(),
            format!("{text} is a framing or hop-by-hop header; a transform cannot change it"),
        ));
        return None;
    }
    if name == http::header::HOST && !explicit_set {
        problems.push((
            field.to_string(),
            "Host can only be replaced with set_headers, not added, removed or renamed".to_string(),
        ));
        return None;
    }
    Some(name)
}

impl HeaderOps {
    pub fn build(config: &MessageTransformConfig) -> Result<HeaderOps, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut ops = HeaderOps::default();
        for (i, text) in config.remove_headers.iter().enumerate() {
            if let Some(n) = name(&format!("remove_headers[{i}]"), text, false, &mut problems) {
                ops.remove.push(n);
            }
        }
        for (from, to) in &config.rename_headers {
            let field = format!("rename_headers.{from}");
            let f = name(&field, from, false, &mut problems);
            let t = name(&field, to, false, &mut problems);
            if let (Some(f), Some(t)) = (f, t) {
                ops.rename.push((f, t));
            }
        }
        for (list, field, explicit) in [
            (&config.set_headers, "set_headers", true),
            (&config.add_headers, "add_headers", false),
        ] {
            for (key, value) in list {
                let path = format!("{field}.{key}");
                let n = name(&path, key, explicit, &mut problems);
                match Template::compile(value) {
                    Ok(t) => {
                        if let Some(n) = n {
                            if explicit {
                                ops.set.push((n, t));
                            } else {
                                ops.add.push((n, t));
                            }
                        }
                    }
                    Err(e) => problems.push((path, e)),
                }
            }
        }
        if problems.is_empty() {
            Ok(ops)
        } else {
            Err(problems)
        }
    }

    pub fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.rename.is_empty()
            && self.set.is_empty()
            && self.add.is_empty()
    }

    /// Applies the edits; `render` gets each template and the headers before any edit.
    pub fn apply(
        &self,
        headers: &mut HeaderMap,
        render: impl Fn(&Template, &HeaderMap) -> Option<HeaderValue>,
    ) {
        if self.is_empty() {
            return;
        }
        // Render first, against the message as it arrived.
        let set: Vec<(&HeaderName, Option<HeaderValue>)> = self
            .set
            .iter()
            .map(|(n, t)| (n, render(t, headers)))
            .collect();
        let add: Vec<(&HeaderName, Option<HeaderValue>)> = self
            .add
            .iter()
            .map(|(n, t)| (n, render(t, headers)))
            .collect();
        for n in &self.remove {
            headers.remove(n);
        }
        for (from, to) in &self.rename {
            let values: Vec<HeaderValue> = match headers.entry(from) {
                http::header::Entry::Occupied(e) => e.remove_entry_mult().1.collect(),
                http::header::Entry::Vacant(_) => continue,
            };
            headers.remove(to);
            for v in values {
                headers.append(to.clone(), v);
            }
        }
        for (n, v) in set {
            match v {
                Some(v) => {
                    headers.insert(n.clone(), v);
                }
                // A template without a value leaves the header out entirely, so a client
                // cannot keep its own copy of a header the gateway meant to set.
                None => {
                    headers.remove(n);
                }
            }
        }
        for (n, v) in add {
            if let Some(v) = v {
                headers.append(n.clone(), v);
            }
        }
    }
}
