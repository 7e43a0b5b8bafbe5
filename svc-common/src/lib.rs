//! What users-api and rides-api have in common, kept in one place so the two
//! services cannot drift apart on the parts SPEC says are the same for both:
//! the `_count` rule (section 4), the 404/405 answers, `/api/v1/db/clear`,
//! and how a failed orchestrator call becomes a status code.
//!
//! Each service's own routes, validation and domain logic stay in its crate.

pub mod housekeeping;
pub mod http;
pub mod orchestrator_client;
pub mod request_count;
pub mod startup;
