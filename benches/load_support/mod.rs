//! Parts of the load harness (benches/load.rs): the backend process, child processes and
//! pinning, the load generator, and the report.

pub mod backend;
pub mod drive;
pub mod procs;
pub mod report;
