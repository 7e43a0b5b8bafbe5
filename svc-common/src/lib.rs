//! What users-api and rides-api have in common, kept in one place so the two
//! services cannot drift apart on the parts docs/api.md says are the same for
//! both: the `_count` rule, the 404/405 answers, how a body is read,
//! `/api/v1/db/clear`, their shared settings, their timings, and how a failed
//! orchestrator call becomes a status code.
//!
//! Each service's own routes, validation and domain logic stay in its crate.

pub mod config;
pub mod failover;
pub mod housekeeping;
pub mod http;
pub mod idempotency;
pub mod metrics;
pub mod orchestrator_client;
pub mod process_test;
pub mod request_count;
pub mod startup;
pub mod timing;
