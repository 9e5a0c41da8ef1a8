//! Parts of the load harness (benches/load.rs): the backend process, child processes and
//! pinning, the proxies' configs, the load generator, the modes other than the default
//! one, and the report.

pub mod backend;
pub mod defaults;
pub mod drive;
pub mod haproxy;
pub mod https;
pub mod nginx;
pub mod portico_conf;
pub mod procs;
pub mod report;
pub mod scaling;
