//! Placeholder: the worker runtime (Docker through bollard, or local processes) lands here.
