//! The database orchestrator: the HTTP front of the database, the RPC client of
//! the workers, the worker supervisor (runtime, autoscaler, failover).

pub mod runtime;
