//! The benchmark as a library, so that other binaries and modules (e.g. a
//! million-row mode) reuse its parts: the settings ([`opts`]), per-process
//! CPU and memory from /proc ([`procs`]), the bounded load driver ([`load`]),
//! wrk through the load balancer ([`wrk`]), the ceilings measured in the same
//! run ([`ceilings`]), the seeded data and requests ([`scenarios`]), the table
//! and JSON ([`report`]), the continuous backup's cost, lag and restore
//! ([`backup`]) and one whole run ([`run`]).
//!
//! Every request goes to 127.0.0.1; every loop is bounded in time and count.

pub mod backup;
pub mod ceilings;
pub mod load;
pub mod million;
pub mod opts;
pub mod procs;
pub mod report;
pub mod run;
pub mod scenarios;
pub mod wrk;
