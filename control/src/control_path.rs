//! The control process's path from objects to the table region: one
//! long-lived [`Compiler`] and the region's [`RegionWriter`]. `edgeplane
//! control` (and `run`) drive it; the `control_path` bench drives the same
//! code.

use std::path::Path;

use edgeplane_dataplane::region::{PublishReport, RegionError, RegionWriter, WriterOptions};
use edgeplane_dataplane::Tables;

use crate::compile::{CompileError, CompileOptions, CompileStats, Compiled, Compiler};
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
    /// The previous compile's warnings (a warning is logged when it first
    /// appears, not on every compile).
    seen_warnings: Vec<String>,
    /// The last generation compiled, dropped after the flip
    /// ([`after_flip`](Self::after_flip)) rather than before it.
    retired: Option<Compiled>,
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
            seen_warnings: Vec::new(),
            retired: None,
        })
    }

    pub fn writer(&self) -> &RegionWriter {
        &self.writer
    }

    pub fn compiler_mut(&mut self) -> &mut Compiler {
        &mut self.compiler
    }

    /// Compiles `objects` as the next generation, logging warnings that
    /// were not there last time.
    pub fn compile(&mut self, objects: &ObjectSet) -> (Compiled, CompileStats) {
        let (c, st) = self
            .compiler
            .compile_with_stats(objects, self.writer.generation() + 1);
        if c.warnings != self.seen_warnings {
            for w in c
                .warnings
                .iter()
                .filter(|w| !self.seen_warnings.contains(w))
            {
                tracing::warn!("{w}");
            }
            self.seen_warnings.clone_from(&c.warnings);
        }
        (c, st)
    }

    /// Publishes `tables` (the region numbers the generation).
    pub fn publish(&mut self, tables: &Tables) -> Result<PublishReport, RegionError> {
        self.writer.publish(tables)
    }

    /// Compiles `objects` and publishes the result, up to the flip. On a
    /// publication error the compiled tables are returned for a retry.
    pub fn compile_publish(
        &mut self,
        objects: &ObjectSet,
    ) -> Result<(PublishReport, CompileStats), (RegionError, Box<Tables>)> {
        let (c, st) = self.compile(objects);
        match self.writer.publish(&c.tables) {
            Ok(r) => {
                self.retired = Some(c);
                Ok((r, st))
            }
            Err(e) => Err((e, Box::new(c.tables))),
        }
    }

    /// Frees what the last publication replaced (call after the flip, off
    /// the latency path).
    pub fn after_flip(&mut self) {
        self.retired = None;
    }
}
