//! The worker as a library: the binary (`main.rs`) runs [`node::run`]; the
//! archiver reuses the store, the snapshot protocol and the broker topology.

pub mod amqp;
pub mod config;
pub mod master;
pub mod node;
pub mod reads;
pub mod restore;
pub mod slave;
pub mod snapshot;
pub mod sql;
pub mod store;
pub mod timing;
pub mod zk;
