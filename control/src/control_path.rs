//! The control process's path from objects to the table region: one
//! long-lived [`Compiler`] and the region's [`RegionWriter`]. `edgeplane
//! control` (and `run`) drive it; the `control_path` bench drives the same
//! code.

use std::path::Path;

use edgeplane_dataplane::region::{PublishReport, RegionError, RegionWriter, WriterOptions};

use crate::compile::{CompileError, CompileOptions, Compiler, SegmentsCompiled};
use crate::manifests::ObjectSet;

/// Why the path could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControlPathError {
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error(transparent)]
    Region(#[from] RegionError),
}

/// A compiler and the region writer it publishes into.
#[derive(Debug)]
pub struct ControlPath {
    compiler: Compiler,
    writer: RegionWriter,
    /// Warnings already logged (a warning is logged when it first
    /// appears, not on every compile).
    seen_warnings: hashbrown::HashSet<String>,
    /// The compiled generation has not been published yet (the region was
    /// busy): [`publish_pending`](Self::publish_pending) retries.
    pending: bool,
}

impl ControlPath {
    /// Opens the region in `dir` and a compiler for `opts`. `trust_rv`:
    /// objects come from the API server ([`Compiler::trust_resource_version`]).
    pub fn open(
        dir: &Path,
        wopts: WriterOptions,
        opts: CompileOptions,
        trust_rv: bool,
    ) -> Result<ControlPath, ControlPathError> {
        let mut compiler = Compiler::new(opts)?;
        compiler.trust_resource_version(trust_rv);
        let writer = RegionWriter::open(dir, wopts)?;
        Ok(ControlPath {
            compiler,
            writer,
            seen_warnings: Default::default(),
            pending: false,
        })
    }

    pub fn writer(&self) -> &RegionWriter {
        &self.writer
    }

    pub fn compiler(&self) -> &Compiler {
        &self.compiler
    }

    /// Whether a compiled generation waits to be published.
    pub fn pending(&self) -> bool {
        self.pending
    }

    /// Compiles `objects` (following their journal when it continues the
    /// last one: only the changed objects are visited) and publishes the
    /// generation, up to the flip: only the segments of Services that
    /// changed are written. Warnings are logged when first seen. On a
    /// publication error the generation stays pending.
    pub fn compile_publish(
        &mut self,
        objects: &ObjectSet,
    ) -> (SegmentsCompiled, Result<PublishReport, RegionError>) {
        let c = self
            .compiler
            .compile_segments(objects, self.writer.generation() + 1);
        if !c.incremental {
            // A full compile lists every warning: forget the ones gone.
            self.seen_warnings.retain(|w| c.warnings.contains(w));
        }
        for w in &c.warnings {
            if !self.seen_warnings.contains(w) {
                tracing::warn!("{w}");
                self.seen_warnings.insert(w.clone());
            }
        }
        self.pending = true;
        let r = self.publish_pending();
        (c, r)
    }

    /// Publishes the last compiled generation.
    pub fn publish_pending(&mut self) -> Result<PublishReport, RegionError> {
        let (node, segments) = self.compiler.segments();
        let r = self.writer.publish_segments(node, segments)?;
        self.pending = false;
        Ok(r)
    }
}
