//! Just enough Kubernetes protobuf to accept what kubectl's typed clients
//! POST as `application/vnd.kubernetes.protobuf` for `kubectl create
//! namespace` and `kubectl create configmap`: the `k8s\0` envelope
//! (`runtime.Unknown`), `ObjectMeta` (name, generateName, namespace, labels,
//! annotations, finalizers) and the Namespace and ConfigMap bodies. Other
//! kinds sent as protobuf are answered 415 (use `kubectl apply -f`, which
//! sends JSON).

use serde_json::{json, Map, Value};

/// One decoded field: number and payload.
enum Field<'a> {
    Varint,
    Bytes(&'a [u8]),
}

fn varint(b: &[u8], i: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*i)?;
        *i += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The fields of one message, in order; `None` if malformed.
fn fields(b: &[u8]) -> Option<Vec<(u64, Field<'_>)>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let tag = varint(b, &mut i)?;
        let (num, wire) = (tag >> 3, tag & 7);
        let f = match wire {
            0 => {
                varint(b, &mut i)?;
                Field::Varint
            }
            1 => {
                i = i.checked_add(8).filter(|e| *e <= b.len())?;
                continue;
            }
            2 => {
                let len = usize::try_from(varint(b, &mut i)?).ok()?;
                let end = i.checked_add(len).filter(|e| *e <= b.len())?;
                let s = &b[i..end];
                i = end;
                Field::Bytes(s)
            }
            5 => {
                i = i.checked_add(4).filter(|e| *e <= b.len())?;
                continue;
            }
            _ => return None,
        };
        out.push((num, f));
    }
    Some(out)
}

fn string(f: &Field<'_>) -> Option<String> {
    match f {
        Field::Bytes(b) => std::str::from_utf8(b).ok().map(str::to_string),
        Field::Varint => None,
    }
}

fn map_entry(f: &Field<'_>) -> Option<(String, String)> {
    let Field::Bytes(b) = f else { return None };
    let mut k = String::new();
    let mut v = String::new();
    for (n, x) in fields(b)? {
        match n {
            1 => k = string(&x)?,
            2 => v = string(&x)?,
            _ => {}
        }
    }
    Some((k, v))
}

fn object_meta(b: &[u8]) -> Option<Value> {
    let mut m = Map::new();
    let mut labels = Map::new();
    let mut annotations = Map::new();
    let mut finalizers = Vec::new();
    for (n, f) in fields(b)? {
        match n {
            1 => {
                m.insert("name".into(), json!(string(&f)?));
            }
            2 => {
                m.insert("generateName".into(), json!(string(&f)?));
            }
            3 => {
                m.insert("namespace".into(), json!(string(&f)?));
            }
            11 => {
                let (k, v) = map_entry(&f)?;
                labels.insert(k, json!(v));
            }
            12 => {
                let (k, v) = map_entry(&f)?;
                annotations.insert(k, json!(v));
            }
            14 => finalizers.push(json!(string(&f)?)),
            _ => {}
        }
    }
    if !labels.is_empty() {
        m.insert("labels".into(), Value::Object(labels));
    }
    if !annotations.is_empty() {
        m.insert("annotations".into(), Value::Object(annotations));
    }
    if !finalizers.is_empty() {
        m.insert("finalizers".into(), Value::Array(finalizers));
    }
    Some(Value::Object(m))
}

/// Decodes an enveloped protobuf object into its JSON form, for the kinds
/// listed in the module doc.
pub fn decode(body: &[u8]) -> Option<Value> {
    let unknown = body.strip_prefix(b"k8s\0")?;
    let mut api_version = String::new();
    let mut kind = String::new();
    let mut raw: &[u8] = &[];
    for (n, f) in fields(unknown)? {
        match (n, f) {
            (1, Field::Bytes(tm)) => {
                for (n, x) in fields(tm)? {
                    match n {
                        1 => api_version = string(&x)?,
                        2 => kind = string(&x)?,
                        _ => {}
                    }
                }
            }
            (2, Field::Bytes(r)) => raw = r,
            _ => {}
        }
    }
    let mut obj = json!({"apiVersion": api_version, "kind": kind});
    let mut data = Map::new();
    for (n, f) in fields(raw)? {
        match (kind.as_str(), n, f) {
            (_, 1, Field::Bytes(m)) => obj["metadata"] = object_meta(m)?,
            ("Namespace", 2, Field::Bytes(spec)) => {
                let fin: Option<Vec<Value>> = fields(spec)?
                    .iter()
                    .filter(|(n, _)| *n == 1)
                    .map(|(_, f)| string(f).map(Value::String))
                    .collect();
                obj["spec"] = json!({"finalizers": fin?});
            }
            ("ConfigMap", 2, f) => {
                let (k, v) = map_entry(&f)?;
                data.insert(k, json!(v));
            }
            ("Namespace" | "ConfigMap", _, _) => {}
            _ => return None,
        }
    }
    if kind == "ConfigMap" && !data.is_empty() {
        obj["data"] = Value::Object(data);
    }
    Some(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ld(num: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![(num << 3) | 2, payload.len() as u8];
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn decodes_a_namespace_as_kubectl_create_sends_it() {
        let meta = [ld(1, b"team"), ld(11, &[ld(1, b"a"), ld(2, b"b")].concat())].concat();
        let ns = [ld(1, &meta), ld(2, &[]), ld(3, &[])].concat();
        let tm = [ld(1, b"v1"), ld(2, b"Namespace")].concat();
        let body = [b"k8s\0".to_vec(), ld(1, &tm), ld(2, &ns)].concat();
        assert_eq!(
            decode(&body),
            Some(json!({"apiVersion": "v1", "kind": "Namespace",
                        "metadata": {"name": "team", "labels": {"a": "b"}},
                        "spec": {"finalizers": []}}))
        );
        assert_eq!(decode(b"k8s\0\x0a\xff"), None, "truncated");
        assert_eq!(decode(b"{}"), None, "not enveloped");
    }
}
