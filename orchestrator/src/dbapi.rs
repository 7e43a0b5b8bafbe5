//! The database API the REST services use, on top of the RPC client:
//! validation, request ids, the read floor that keeps reads from being stale.
//!
//! Invariant: only a read that passed validation ([`ValidRead`]) reaches a
//! worker or the autoscaler's count: a flood of malformed reads is refused
//! here and scales nothing.

use std::sync::Arc;

use wire::contract::ErrorKind;
use wire::{Consistency, RawReadResponse, ReadMsg, ReadRequest, Reply, WriteMsg, WriteOutcome, WriteRequest};

use crate::error::ApiError;
use crate::read_floor::ReadFloor;
use crate::rpc::{Answer, Rpc};

pub struct DbApi {
    rpc: Arc<Rpc>,
    /// What a strong read passes as the floor the answering slave must have
    /// applied (`read_floor`: covers every acknowledged write).
    floor: Arc<ReadFloor>,
}

impl DbApi {
    pub fn new(rpc: Arc<Rpc>, floor: Arc<ReadFloor>) -> Self {
        DbApi { rpc, floor }
    }

    pub async fn read(&self, ValidRead(req): ValidRead) -> Result<RawReadResponse, ApiError> {
        self.rpc.no_master.check(self.rpc.min_epoch())?;
        let min_seq = match req.consistency {
            Consistency::Strong => self.floor.floor().await?,
            Consistency::Eventual => 0,
        };
        let deadline_ms = Some(wire::now_ms() + self.rpc.read_timeout().as_millis() as u64);
        match self.rpc.read(ReadMsg { read: req, min_seq, deadline_ms }).await? {
            Answer::Rows(r) => Ok(r),
            Answer::Other(other) => Err(unexpected(other)),
        }
    }

    pub async fn write(&self, mut req: WriteRequest) -> Result<WriteOutcome, ApiError> {
        req.validate().map_err(|e| ApiError::invalid(e.0))?;
        self.rpc.no_master.check(self.rpc.min_epoch())?;
        if req.request_id.is_none() {
            req.request_id = Some(uuid::Uuid::new_v4().to_string());
        }
        let deadline_ms = Some(wire::now_ms() + self.rpc.write_timeout().as_millis() as u64);
        match self.rpc.write(WriteMsg { write: Some(req), deadline_ms }).await? {
            Reply::Written { outcome, epoch } => {
                self.floor.acknowledged(epoch, outcome.seq);
                Ok(outcome)
            }
            other => Err(unexpected(other)),
        }
    }

    pub async fn clear(&self) -> Result<WriteOutcome, ApiError> {
        self.write(WriteRequest::clear()).await
    }
}

/// A read request that passed `wire`'s validation (every name in the
/// schema, every bound kept): the only kind [`DbApi::read`] sends, and the
/// only kind the autoscaler counts.
#[derive(Debug)]
pub struct ValidRead(ReadRequest);

impl ValidRead {
    pub fn new(req: ReadRequest) -> Result<ValidRead, ApiError> {
        req.validate().map_err(|e| ApiError::invalid(e.0))?;
        Ok(ValidRead(req))
    }
}

fn unexpected(reply: Reply) -> ApiError {
    match reply {
        Reply::Conflict { error, .. } => ApiError::conflict(error),
        Reply::Invalid { error } => ApiError::invalid(error),
        Reply::Unavailable { error } => ApiError::unavailable(error),
        Reply::Rows(_) | Reply::Written { .. } | Reply::ReadIndex { .. } | Reply::Batch { .. } => {
            ApiError::new(ErrorKind::Failed, "worker answered the wrong kind of reply")
        }
    }
}
