//! The sans-IO service engine.
//!
//! [`Engine::process`] is a pure function of (frame, `now`, [`Tables`]) plus the
//! engine's own flow state (conntrack, affinity): no sockets, no clocks, no
//! threads. The live AF_XDP path, `edgeplane replay`, the tests and the benches
//! all drive this same function.

pub mod affinity;
#[cfg(feature = "afxdp")]
pub mod afxdp;
pub mod conntrack;
pub mod drop_reason;
pub mod engine;
pub mod hash;
pub mod prefetch;
pub mod region;
pub mod shed;
pub mod shm;
pub mod tables;
pub mod testing;
pub mod traffic;

pub use drop_reason::DropReason;
pub use engine::{Egress, Engine, EngineConfig, Stats, Verdict};
pub use tables::{
    Backend, Frontend, FrontendKey, FrontendKind, MaglevTable, NodeConfig, Segment, ServiceInfo,
    Tables, TablesBuilder,
};
