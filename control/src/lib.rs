//! The control side of edgeplane: Kubernetes objects in, engine tables out.
//!
//! - [`manifests`] loads Services, EndpointSlices and Nodes from files into an
//!   [`ObjectSet`], with diagnostics instead of aborts;
//! - [`validate`] holds the per-object checks every source shares;
//! - [`compile`] turns an [`ObjectSet`] into one immutable
//!   [`edgeplane_dataplane::Tables`] generation with kube-proxy's endpoint
//!   selection rules — the one compile path, whatever the source;
//! - [`maglev`] builds the consistent-hash tables (the data side only indexes them);
//! - [`report`] renders what was compiled, as text or JSON.

pub mod compile;
pub mod control_path;
pub mod kube;
pub mod maglev;
pub mod manifests;
pub mod report;
pub mod validate;

pub use compile::{
    compile, CompileError, CompileOptions, CompileStats, Compiled, Compiler, SegmentsCompiled,
};
pub use manifests::{load_path, load_str, Diagnostic, Journal, ObjectSet};
pub use report::{render_json, render_table, Report};
