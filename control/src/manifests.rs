//! Loading Kubernetes manifests from files.
//!
//! Promises:
//! - [`load_path`] reads one file, or a directory recursively (`*.yaml`,
//!   `*.yml`, `*.json`, in sorted path order, so results are deterministic).
//! - Every file may hold several YAML documents and `List` objects
//!   (`kubectl get -o yaml` output).
//! - Services (`v1`), EndpointSlices (`discovery.k8s.io/v1`) and Nodes (`v1`)
//!   are kept, sanitized by [`crate::validate`]; other kinds are skipped with a
//!   debug log line.
//! - Nothing a manifest says aborts loading: a bad document or object becomes
//!   a [`Diagnostic`] naming the file, the line, the document and the object,
//!   and everything else still loads. Only an unreadable top-level path is an
//!   error.

use std::fmt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::Value;

use crate::validate::{self, Problem, SliceUse};

/// The Kubernetes objects the compiler reads, from any source.
#[derive(Debug, Clone, Default)]
pub struct ObjectSet {
    pub services: Vec<Service>,
    pub endpoint_slices: Vec<EndpointSlice>,
    pub nodes: Vec<Node>,
    /// What changed between successive snapshots of one source (the
    /// Kubernetes source's; empty for manifests). Lets a long-lived
    /// [`Compiler`](crate::Compiler) visit only the changed objects.
    pub journal: Journal,
}

/// The kind of a journaled object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjKind {
    Service,
    EndpointSlice,
    Node,
}

/// One change of an [`ObjectSet`] updated in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    /// 1, 2, ... within the lineage.
    pub seq: u64,
    pub kind: ObjKind,
    pub namespace: String,
    pub name: String,
    /// Where the object is now in its vector; `None`: deleted. An object
    /// moved by another's deletion gets an entry too, so the last entry of
    /// a key says where it is.
    pub pos: Option<usize>,
}

/// The changes of an [`ObjectSet`] that a source updates in place: within
/// one `lineage` (a source's run between two complete lists), the set
/// after entry `seq` equals the set after entry `seq - 1` with that change
/// applied. A consumer that has seen the set at sequence `s` of the same
/// lineage needs only the entries after `s` — if the journal still holds
/// them (it keeps the latest [`Journal::CAPACITY`]).
#[derive(Debug, Clone, Default)]
pub struct Journal {
    /// 0: no journal (every snapshot stands alone). A complete (re)list
    /// starts a new lineage.
    pub lineage: u64,
    /// The sequence number of the last change (0: none since the list).
    pub seq: u64,
    /// The latest changes, oldest first.
    pub entries: std::collections::VecDeque<JournalEntry>,
}

impl Journal {
    /// Entries kept.
    pub const CAPACITY: usize = 65_536;

    /// Starts a new lineage (after a complete list): no entries.
    pub fn restart(&mut self) {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        self.lineage = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.seq = 0;
        self.entries.clear();
    }

    /// Records a change.
    pub fn push(&mut self, kind: ObjKind, namespace: &str, name: &str, pos: Option<usize>) {
        self.seq += 1;
        if self.entries.len() >= Self::CAPACITY {
            self.entries.pop_front();
        }
        self.entries.push_back(JournalEntry {
            seq: self.seq,
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
            pos,
        });
    }

    /// The entries after sequence `seen`, or `None` when the journal no
    /// longer reaches back that far (or `seen` is from the future).
    pub fn since(&self, seen: u64) -> Option<impl Iterator<Item = &JournalEntry>> {
        if seen > self.seq {
            return None;
        }
        if seen < self.seq {
            let first = self.entries.front()?.seq;
            if first > seen + 1 {
                return None;
            }
        }
        Some(self.entries.iter().filter(move |e| e.seq > seen))
    }
}

impl ObjectSet {
    /// Appends every object of `other`.
    pub fn extend(&mut self, other: ObjectSet) {
        self.services.extend(other.services);
        self.endpoint_slices.extend(other.endpoint_slices);
        self.nodes.extend(other.nodes);
    }

    /// Total number of objects.
    pub fn len(&self) -> usize {
        self.services.len() + self.endpoint_slices.len() + self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The object a diagnostic is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    pub kind: String,
    /// Empty for cluster-scoped objects.
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = if self.name.is_empty() {
            "<unnamed>"
        } else {
            &self.name
        };
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, name)
        }
    }
}

/// Why a document or object was not (fully) loaded.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A file could not be read.
    #[error("cannot read: {0}")]
    Io(#[source] std::io::Error),
    /// The document is not valid YAML/JSON.
    #[error("invalid YAML: {0}")]
    Yaml(#[source] serde_yaml::Error),
    /// The document is not a mapping with string `apiVersion` and `kind`.
    #[error("not a Kubernetes object (a mapping with apiVersion and kind)")]
    NotAnObject,
    /// A known kind with an apiVersion this loader does not read.
    #[error("{kind} apiVersion {api_version:?} is not supported (expected {expected:?})")]
    UnsupportedVersion {
        kind: String,
        api_version: String,
        expected: &'static str,
    },
    /// The object does not match its schema (wrong field types and the like).
    #[error("invalid {kind}: {source}")]
    Decode {
        kind: String,
        #[source]
        source: serde_json::Error,
    },
    /// The object decoded but a check failed (see [`Problem`]).
    #[error(transparent)]
    Invalid(#[from] Problem),
}

/// A top-level failure of [`load_path`].
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The path does not exist or cannot be listed/read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where in the input a diagnostic points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// File name (or the name given to [`load_str`]).
    pub file: String,
    /// 1-based document index within the file; 0 = the file as a whole.
    pub document: usize,
    /// 1-based line where the document starts; 0 = unknown.
    pub line: usize,
    /// 0-based item index within a `List` document.
    pub item: Option<usize>,
}

/// One problem found while loading.
#[derive(Debug)]
pub struct Diagnostic {
    pub location: Location,
    /// The object, when it could be identified.
    pub object: Option<ObjectRef>,
    pub error: ManifestError,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.location;
        write!(f, "{}", l.file)?;
        if l.line > 0 {
            write!(f, ":{}", l.line)?;
        }
        if l.document > 0 {
            write!(f, ": document {}", l.document)?;
        }
        if let Some(i) = l.item {
            write!(f, " item {i}")?;
        }
        if let Some(o) = &self.object {
            write!(f, ": {o}")?;
        }
        write!(f, ": {}", self.error)
    }
}

/// Loads a file or a directory tree of manifests.
pub fn load_path(path: &Path) -> Result<(ObjectSet, Vec<Diagnostic>), LoadError> {
    let io = |source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    let files = if meta.is_dir() {
        let mut files = Vec::new();
        collect_files(path, &mut files).map_err(io)?;
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut objects = ObjectSet::default();
    let mut diagnostics = Vec::new();
    for file in files {
        let name = file.display().to_string();
        match std::fs::read_to_string(&file) {
            Ok(text) => {
                let (o, d) = load_str(&name, &text);
                objects.extend(o);
                diagnostics.extend(d);
            }
            Err(e) => diagnostics.push(Diagnostic {
                location: Location {
                    file: name,
                    document: 0,
                    line: 0,
                    item: None,
                },
                object: None,
                error: ManifestError::Io(e),
            }),
        }
    }
    Ok((objects, diagnostics))
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let p = entry?.path();
        if p.is_dir() {
            collect_files(&p, out)?;
        } else if matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(p);
        }
    }
    Ok(())
}

/// Splits a YAML stream into documents at `---` / `...` marker lines,
/// keeping each document's 1-based start line. Splitting on the text (rather
/// than in the YAML parser) lets a broken document fail alone.
fn split_documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let mut cur = String::new();
    let mut start = 1;
    for (i, line) in text.lines().enumerate() {
        let is_marker = |m: &str| {
            line.strip_prefix(m)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '#']))
        };
        if is_marker("---") || is_marker("...") {
            docs.push((start, std::mem::take(&mut cur)));
            start = i + 2;
            // `--- {inline: doc}` carries content on the marker line.
            if let Some(rest) = line.strip_prefix("---") {
                let rest = rest.trim();
                if !rest.is_empty() && !rest.starts_with('#') {
                    cur.push_str(rest);
                    cur.push('\n');
                    start = i + 1;
                }
            }
        } else {
            cur.push_str(line);
            cur.push('\n');
        }
    }
    docs.push((start, cur));
    docs
}

/// Loads manifests from a string; `name` is used in diagnostics.
pub fn load_str(name: &str, text: &str) -> (ObjectSet, Vec<Diagnostic>) {
    let mut objects = ObjectSet::default();
    let mut diagnostics = Vec::new();
    let mut document = 0;
    for (line, doc) in split_documents(text) {
        if doc.trim().is_empty()
            || doc
                .lines()
                .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            continue;
        }
        document += 1;
        let location = Location {
            file: name.to_string(),
            document,
            line,
            item: None,
        };
        match serde_yaml::from_str::<Value>(&doc) {
            Ok(Value::Null) => {}
            Ok(v) => add_value(v, location, &mut objects, &mut diagnostics),
            Err(e) => diagnostics.push(Diagnostic {
                location,
                object: None,
                error: ManifestError::Yaml(e),
            }),
        }
    }
    (objects, diagnostics)
}

fn object_ref(v: &Value) -> Option<ObjectRef> {
    let kind = v.get("kind")?.as_str()?.to_string();
    let meta = v.get("metadata");
    let s = |k: &str| {
        meta.and_then(|m| m.get(k))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let mut namespace = s("namespace");
    if namespace.is_empty() && kind != "Node" {
        namespace = "default".into();
    }
    Some(ObjectRef {
        kind,
        namespace,
        name: s("name"),
    })
}

fn add_value(v: Value, location: Location, objects: &mut ObjectSet, diags: &mut Vec<Diagnostic>) {
    let object = object_ref(&v);
    let api_version = v
        .get("apiVersion")
        .and_then(Value::as_str)
        .map(str::to_string);
    let (Some(obj), Some(api_version)) = (object.clone(), api_version) else {
        diags.push(Diagnostic {
            location,
            object,
            error: ManifestError::NotAnObject,
        });
        return;
    };
    let mut push = |error: ManifestError| {
        diags.push(Diagnostic {
            location: location.clone(),
            object: object.clone(),
            error,
        })
    };
    let expected = match obj.kind.as_str() {
        "Service" | "Node" => "v1",
        "EndpointSlice" => "discovery.k8s.io/v1",
        k if k.ends_with("List") => {
            let items = match v.get("items") {
                Some(Value::Array(items)) => items.clone(),
                Some(Value::Null) | None => Vec::new(),
                Some(_) => return push(ManifestError::NotAnObject),
            };
            for (i, item) in items.into_iter().enumerate() {
                let loc = Location {
                    item: Some(i),
                    ..location.clone()
                };
                add_value(item, loc, objects, diags);
            }
            return;
        }
        other => {
            tracing::debug!(file = %location.file, document = location.document, kind = other, "ignoring object of an unused kind");
            return;
        }
    };
    if api_version != expected {
        return push(ManifestError::UnsupportedVersion {
            kind: obj.kind.clone(),
            api_version,
            expected,
        });
    }
    let decode = |source| ManifestError::Decode {
        kind: obj.kind.clone(),
        source,
    };
    let report = |problems: Vec<Problem>, push: &mut dyn FnMut(ManifestError)| {
        let fatal = problems.iter().any(Problem::is_fatal);
        for p in problems {
            push(ManifestError::Invalid(p));
        }
        !fatal
    };
    match obj.kind.as_str() {
        "Service" => match serde_json::from_value::<Service>(v) {
            Ok(mut s) => {
                if report(validate::sanitize_service(&mut s), &mut push) {
                    objects.services.push(s);
                }
            }
            Err(e) => push(decode(e)),
        },
        "EndpointSlice" => match serde_json::from_value::<EndpointSlice>(v) {
            Ok(mut s) => {
                let (usage, problems) = validate::sanitize_endpoint_slice(&mut s);
                if report(problems, &mut push) {
                    match usage {
                        SliceUse::Use => objects.endpoint_slices.push(s),
                        SliceUse::IgnoreFqdn => {
                            tracing::debug!(file = %location.file, object = %obj, "ignoring FQDN EndpointSlice")
                        }
                    }
                }
            }
            Err(e) => push(decode(e)),
        },
        _ => match serde_json::from_value::<Node>(v) {
            Ok(mut n) => {
                if report(validate::sanitize_node(&mut n), &mut push) {
                    objects.nodes.push(n);
                }
            }
            Err(e) => push(decode(e)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_documents_with_lines() {
        let d = split_documents("a: 1\n---\nb: 2\n--- # c\nc: 3\n...\n");
        assert_eq!(d[0], (1, "a: 1\n".to_string()));
        assert_eq!(d[1], (3, "b: 2\n".to_string()));
        assert_eq!(d[2], (5, "c: 3\n".to_string()));
    }

    #[test]
    fn ignores_other_kinds_and_reads_lists() {
        let text = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: x}
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Node
  metadata: {name: node-a}
- apiVersion: v1
  kind: Service
  metadata: {name: s}
  spec: {clusterIP: 198.18.200.1, ports: [{port: 80}]}
"#;
        let (o, d) = load_str("t.yaml", text);
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(o.nodes.len(), 1);
        assert_eq!(o.services.len(), 1);
        let s = &o.services[0];
        assert_eq!(s.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(
            s.spec.as_ref().unwrap().ports.as_ref().unwrap()[0]
                .protocol
                .as_deref(),
            Some("TCP")
        );
    }

    #[test]
    fn json_file_loads() {
        let text = r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"n"}}"#;
        let (o, d) = load_str("n.json", text);
        assert!(d.is_empty());
        assert_eq!(o.nodes.len(), 1);
    }
}
