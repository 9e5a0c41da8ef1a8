//! JSON body edits: `set` (dotted paths create objects as needed), `remove`, `rename`.
//! A path segment `*` applies the rest of the path to every element of an array (or
//! every value of an object), so `products.*.priceCents` edits each product of a list.
//! Paths are split once, when the config is built.

use serde_json::{Map, Value};

use crate::config::JsonBodyConfig;

/// Default largest body a JSON transform buffers.
pub const DEFAULT_MAX_SIZE: u64 = 1024 * 1024;

#[derive(Clone, Debug)]
pub struct JsonEdit {
    remove: Vec<Vec<String>>,
    rename: Vec<(Vec<String>, Vec<String>)>,
    set: Vec<(Vec<String>, Value)>,
    pub max_size: u64,
}

fn split(path: &str) -> Result<Vec<String>, String> {
    let parts: Vec<String> = path.split('.').map(str::to_string).collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(format!("invalid JSON path {path:?} (empty segment)"));
    }
    Ok(parts)
}

impl JsonEdit {
    pub fn build(config: &JsonBodyConfig) -> Result<JsonEdit, String> {
        let mut set = Vec::new();
        for (path, value) in &config.set {
            let p = split(path)?;
            if p.iter().any(|s| s == "*") {
                return Err(format!(
                    "set: {path:?}: `*` is only allowed in remove and rename"
                ));
            }
            set.push((p, value.clone()));
        }
        let remove = config
            .remove
            .iter()
            .map(|p| split(p))
            .collect::<Result<_, _>>()?;
        let mut rename = Vec::new();
        for (from, to) in &config.rename {
            let (f, t) = (split(from)?, split(to)?);
            if t.iter().any(|s| s == "*") {
                return Err(format!("rename: {to:?}: `*` is not allowed in a target"));
            }
            rename.push((f, t));
        }
        let max_size = config
            .max_size
            .map(|s| s.bytes())
            .unwrap_or(DEFAULT_MAX_SIZE);
        Ok(JsonEdit {
            remove,
            rename,
            set,
            max_size,
        })
    }

    /// Applies remove, then rename, then set.
    pub fn apply(&self, value: &mut Value) {
        for path in &self.remove {
            remove(value, path);
        }
        for (from, to) in &self.rename {
            rename(value, from, to);
        }
        for (path, v) in &self.set {
            set(value, path, v.clone());
        }
    }
}

fn remove(value: &mut Value, path: &[String]) {
    let Some((head, rest)) = path.split_first() else {
        return;
    };
    if head == "*" {
        for_each_child(value, |child| remove(child, rest));
        return;
    }
    let Value::Object(map) = value else { return };
    if rest.is_empty() {
        map.remove(head);
    } else if let Some(child) = map.get_mut(head) {
        remove(child, rest);
    }
}

fn for_each_child(value: &mut Value, mut f: impl FnMut(&mut Value)) {
    match value {
        Value::Array(items) => items.iter_mut().for_each(&mut f),
        Value::Object(map) => map.values_mut().for_each(&mut f),
        _ => {}
    }
}

/// `from` may contain `*`: the rest of the rename then happens inside each element, and
/// `to` is relative to that element (`products.*.createdAt: created_at`).
fn rename(value: &mut Value, from: &[String], to: &[String]) {
    if let Some(pos) = from.iter().position(|s| s == "*") {
        let (prefix, after) = from.split_at(pos);
        let Some(node) = get_mut(value, prefix) else {
            return;
        };
        for_each_child(node, |child| rename(child, &after[1..], to));
        return;
    }
    if let Some(taken) = take(value, from) {
        set(value, to, taken);
    }
}

fn get_mut<'a>(value: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    let mut node = value;
    for seg in path {
        node = node.as_object_mut()?.get_mut(seg)?;
    }
    Some(node)
}

fn take(value: &mut Value, path: &[String]) -> Option<Value> {
    let (last, parents) = path.split_last()?;
    get_mut(value, parents)?.as_object_mut()?.remove(last)
}

/// Sets `path`, creating objects for missing parents. A parent that exists but is not an
/// object is left alone: a transform never destroys data it did not name.
fn set(value: &mut Value, path: &[String], new: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = value;
    for seg in parents {
        let Value::Object(map) = node else { return };
        node = map
            .entry(seg.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    if let Value::Object(map) = node {
        map.insert(last.clone(), new);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn edit(yaml: serde_json::Value) -> JsonEdit {
        JsonEdit::build(&serde_json::from_value(yaml).unwrap()).unwrap()
    }

    #[test]
    fn set_remove_rename_as_in_the_contract() {
        let e = edit(json!({
            "set": {"meta.via": "gateway", "version": 2},
            "remove": ["internal_note", "deep.secret"],
            "rename": {"userId": "user_id"}
        }));
        let mut v = json!({"userId": 7, "internal_note": "x", "deep": {"secret": 1, "keep": 2}, "meta": {"a": 1}});
        e.apply(&mut v);
        assert_eq!(
            v,
            json!({"user_id": 7, "deep": {"keep": 2}, "meta": {"a": 1, "via": "gateway"}, "version": 2})
        );
    }

    #[test]
    fn wildcards_reach_into_lists() {
        let e = edit(
            json!({"remove": ["products.*.priceCents"], "rename": {"products.*.createdAt": "created_at"}}),
        );
        let mut v = json!({"products": [{"id": 1, "priceCents": 5, "createdAt": "t"}, {"id": 2, "priceCents": 6}]});
        e.apply(&mut v);
        assert_eq!(
            v,
            json!({"products": [{"id": 1, "created_at": "t"}, {"id": 2}]})
        );
    }

    #[test]
    fn set_does_not_clobber_non_objects() {
        let e = edit(json!({"set": {"a.b": 1}}));
        let mut v = json!({"a": [1, 2]});
        e.apply(&mut v);
        assert_eq!(v, json!({"a": [1, 2]}));
        let mut v = json!([1]);
        e.apply(&mut v);
        assert_eq!(v, json!([1]));
    }

    #[test]
    fn bad_paths_are_refused() {
        assert!(
            JsonEdit::build(&serde_json::from_value(json!({"remove": ["a..b"]})).unwrap()).is_err()
        );
        assert!(
            JsonEdit::build(&serde_json::from_value(json!({"set": {"a.*": 1}})).unwrap()).is_err()
        );
    }
}
