//! (in progress)
use crate::DropReason;
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Egress { Route, Reflect }
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict { Tx { len: usize, egress: Egress }, Pass, Drop(DropReason) }
#[derive(Debug, Default)]
pub struct Stats;
#[derive(Debug, Default)]
pub struct EngineConfig;
#[derive(Debug, Default)]
pub struct Engine;
