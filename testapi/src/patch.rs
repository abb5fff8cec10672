//! The three PATCH formats: JSON merge patch (RFC 7386), strategic merge
//! patch (as `kubectl apply` sends it) and JSON patch (RFC 6902).
//!
//! Strategic merge patch is implemented without the Go struct tags that tell
//! a real API server which lists merge by key: a list merges by key exactly
//! when the patch carries a `$setElementOrder/<field>` directive for it, and
//! the key is the one field of that directive's entries. kubectl's three-way
//! patch always sends that directive for a changed merging list (ports by
//! `port`, containers by `name`, ...), so `kubectl apply` produces the same
//! result; a hand-written strategic patch that changes a merging list without
//! the directive replaces the list (a known deviation). Also handled:
//! `$patch: replace|delete|merge` in maps and list items,
//! `$deleteFromPrimitiveList/<field>`, `$retainKeys`, and `null` to delete.

use serde_json::{Map, Value};

/// Why a patch could not be applied (400/422 for the client).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    #[error("the patch is not a JSON object")]
    NotAnObject,
    #[error("invalid JSON patch: {0}")]
    JsonPatch(String),
    #[error("JSON patch test failed at {0}")]
    TestFailed(String),
}

/// RFC 7386: objects merge recursively, `null` deletes, everything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else { return };
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// Applies a strategic merge patch (see the module doc for the rules).
pub fn strategic_merge_patch(target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let Value::Object(p) = patch else {
        return Err(PatchError::NotAnObject);
    };
    smp_map(target, p);
    Ok(())
}

fn smp_map(target: &mut Value, patch: &Map<String, Value>) {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut m = patch.clone();
            m.remove("$patch");
            *target = Value::Object(m);
            return;
        }
        Some("delete") => {
            *target = Value::Object(Map::new());
            return;
        }
        _ => {}
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else { return };
    if let Some(Value::Array(keep)) = patch.get("$retainKeys") {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        t.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (k, v) in patch {
        if k.starts_with('$') {
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        let order = patch.get(&format!("$setElementOrder/{k}"));
        let entry = t.entry(k.clone()).or_insert(Value::Null);
        match v {
            Value::Object(pm) => smp_map(entry, pm),
            Value::Array(items) => match order {
                Some(Value::Array(order)) => merge_list(entry, items, order),
                _ => {
                    // Without an order directive: a plain replace, minus any
                    // `$patch` items a hand-written patch may carry.
                    *entry = Value::Array(
                        items
                            .iter()
                            .filter(|i| i.get("$patch").is_none())
                            .cloned()
                            .collect(),
                    );
                }
            },
            other => *entry = other.clone(),
        }
    }
    // Order-only directives (list unchanged but reordered) and deletions from
    // primitive lists.
    for (k, v) in patch {
        if let Some(field) = k.strip_prefix("$setElementOrder/") {
            if !patch.contains_key(field) {
                if let (Some(cur), Value::Array(order)) = (t.get_mut(field), v) {
                    merge_list(cur, &[], order);
                }
            }
        } else if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(cur)), Value::Array(del)) = (t.get_mut(field), v) {
                cur.retain(|x| !del.contains(x));
            }
        }
    }
}

/// The merge key of a list, from its `$setElementOrder` entries.
fn merge_key(order: &[Value]) -> Option<String> {
    order.iter().find_map(|o| {
        o.as_object()
            .and_then(|m| m.keys().find(|k| !k.starts_with('$')).cloned())
    })
}

fn merge_list(target: &mut Value, items: &[Value], order: &[Value]) {
    let mut cur: Vec<Value> = match target {
        Value::Array(a) => std::mem::take(a),
        _ => Vec::new(),
    };
    match merge_key(order) {
        Some(key) => {
            for item in items {
                let Some(kv) = item.get(&key) else { continue };
                let pos = cur.iter().position(|c| c.get(&key) == Some(kv));
                match (item.get("$patch").and_then(Value::as_str), pos) {
                    (Some("delete"), Some(i)) => {
                        cur.remove(i);
                    }
                    (Some("delete"), None) => {}
                    (_, Some(i)) => {
                        if let Value::Object(pm) = item {
                            smp_map(&mut cur[i], pm);
                        }
                    }
                    (_, None) => {
                        let mut v = Value::Null;
                        if let Value::Object(pm) = item {
                            smp_map(&mut v, pm);
                        }
                        cur.push(v);
                    }
                }
            }
            // Entries named by the order first, in its order; the rest after.
            let mut ordered = Vec::with_capacity(cur.len());
            for o in order {
                if let Some(kv) = o.get(&key) {
                    if let Some(i) = cur.iter().position(|c| c.get(&key) == Some(kv)) {
                        ordered.push(cur.remove(i));
                    }
                }
            }
            ordered.extend(cur);
            *target = Value::Array(ordered);
        }
        None => {
            // A list of primitives: union, then the order.
            for item in items {
                if !cur.contains(item) {
                    cur.push(item.clone());
                }
            }
            let mut ordered: Vec<Value> =
                order.iter().filter(|o| cur.contains(o)).cloned().collect();
            ordered.extend(cur.into_iter().filter(|c| !order.contains(c)));
            *target = Value::Array(ordered);
        }
    }
}

fn unescape(tok: &str) -> String {
    tok.replace("~1", "/").replace("~0", "~")
}

fn split_pointer(path: &str) -> Result<(String, String), PatchError> {
    if !path.starts_with('/') {
        return Err(PatchError::JsonPatch(format!("bad path {path:?}")));
    }
    let i = path.rfind('/').unwrap_or(0);
    Ok((path[..i].to_string(), unescape(&path[i + 1..])))
}

fn add_at(doc: &mut Value, path: &str, value: Value) -> Result<(), PatchError> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, last) = split_pointer(path)?;
    let bad = || PatchError::JsonPatch(format!("path {path:?} does not exist"));
    match doc.pointer_mut(&parent).ok_or_else(bad)? {
        Value::Object(m) => {
            m.insert(last, value);
        }
        Value::Array(a) => {
            if last == "-" {
                a.push(value);
            } else {
                let i: usize = last.parse().map_err(|_| bad())?;
                if i > a.len() {
                    return Err(bad());
                }
                a.insert(i, value);
            }
        }
        _ => return Err(bad()),
    }
    Ok(())
}

fn remove_at(doc: &mut Value, path: &str) -> Result<Value, PatchError> {
    let (parent, last) = split_pointer(path)?;
    let bad = || PatchError::JsonPatch(format!("path {path:?} does not exist"));
    match doc.pointer_mut(&parent).ok_or_else(bad)? {
        Value::Object(m) => m.remove(&last).ok_or_else(bad),
        Value::Array(a) => {
            let i: usize = last.parse().map_err(|_| bad())?;
            if i >= a.len() {
                return Err(bad());
            }
            Ok(a.remove(i))
        }
        _ => Err(bad()),
    }
}

/// RFC 6902 JSON patch: add, remove, replace, move, copy, test.
pub fn json_patch(doc: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let ops = patch
        .as_array()
        .ok_or_else(|| PatchError::JsonPatch("expected an array of operations".into()))?;
    let mut work = doc.clone();
    for op in ops {
        let s = |k: &str| op.get(k).and_then(Value::as_str);
        let path = s("path").ok_or_else(|| PatchError::JsonPatch("missing path".into()))?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| PatchError::JsonPatch("missing value".into()))
        };
        match s("op") {
            Some("add") => add_at(&mut work, path, value()?)?,
            Some("remove") => {
                remove_at(&mut work, path)?;
            }
            Some("replace") => {
                remove_at(&mut work, path)?;
                add_at(&mut work, path, value()?)?;
            }
            Some("move") | Some("copy") => {
                let from = s("from").ok_or_else(|| PatchError::JsonPatch("missing from".into()))?;
                let v = if s("op") == Some("move") {
                    remove_at(&mut work, from)?
                } else {
                    work.pointer(from)
                        .cloned()
                        .ok_or_else(|| PatchError::JsonPatch(format!("{from:?} does not exist")))?
                };
                add_at(&mut work, path, v)?;
            }
            Some("test") => {
                if work.pointer(path) != Some(&value()?) {
                    return Err(PatchError::TestFailed(path.to_string()));
                }
            }
            other => return Err(PatchError::JsonPatch(format!("unknown op {other:?}"))),
        }
    }
    *doc = work;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_rfc7386() {
        let mut t = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
        merge_patch(&mut t, &json!({"a": "z", "c": {"f": null}, "l": [3]}));
        assert_eq!(t, json!({"a": "z", "c": {"d": "e"}, "l": [3]}));
    }

    #[test]
    fn strategic_merge_patch_as_kubectl_sends_it() {
        // kubectl apply changing one port's targetPort and removing another.
        let mut t = json!({"spec": {"ports": [
            {"name": "a", "port": 80, "targetPort": 8080},
            {"name": "b", "port": 443, "targetPort": 8443},
            {"name": "c", "port": 53, "protocol": "UDP"}
        ], "selector": {"app": "x"}}});
        let p = json!({"spec": {
            "$setElementOrder/ports": [{"port": 80}, {"port": 53}],
            "ports": [{"port": 80, "targetPort": 9090}, {"$patch": "delete", "port": 443}],
            "selector": {"app": null, "tier": "fe"}
        }});
        strategic_merge_patch(&mut t, &p).unwrap();
        assert_eq!(
            t,
            json!({"spec": {"ports": [
                {"name": "a", "port": 80, "targetPort": 9090},
                {"name": "c", "port": 53, "protocol": "UDP"}
            ], "selector": {"tier": "fe"}}})
        );
    }

    #[test]
    fn strategic_lists_without_directive_replace_and_primitive_deletes() {
        let mut t = json!({"endpoints": [{"addresses": ["1.1.1.1"]}], "f": ["a", "b", "c"]});
        let p = json!({"endpoints": [{"addresses": ["2.2.2.2"]}],
                       "$deleteFromPrimitiveList/f": ["b"]});
        strategic_merge_patch(&mut t, &p).unwrap();
        assert_eq!(
            t,
            json!({"endpoints": [{"addresses": ["2.2.2.2"]}], "f": ["a", "c"]})
        );
        let mut t = json!({"m": {"x": 1, "y": 2}});
        strategic_merge_patch(&mut t, &json!({"m": {"$patch": "replace", "z": 3}})).unwrap();
        assert_eq!(t, json!({"m": {"z": 3}}));
        assert_eq!(
            strategic_merge_patch(&mut t, &json!([1])),
            Err(PatchError::NotAnObject)
        );
    }

    #[test]
    fn json_patch_ops() {
        let mut d = json!({"a": [1, 2], "b": {"c": 1}});
        json_patch(
            &mut d,
            &json!([
                {"op": "add", "path": "/a/-", "value": 3},
                {"op": "replace", "path": "/b/c", "value": 2},
                {"op": "test", "path": "/b/c", "value": 2},
                {"op": "copy", "from": "/b", "path": "/e"},
                {"op": "remove", "path": "/a/0"}
            ]),
        )
        .unwrap();
        assert_eq!(d, json!({"a": [2, 3], "b": {"c": 2}, "e": {"c": 2}}));
        let before = d.clone();
        assert!(json_patch(&mut d, &json!([{"op": "test", "path": "/a/0", "value": 9}])).is_err());
        assert!(json_patch(&mut d, &json!([{"op": "remove", "path": "/zz"}])).is_err());
        assert_eq!(d, before, "a failed patch changes nothing");
    }
}
