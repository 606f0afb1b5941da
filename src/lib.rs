//! thoth-ingest: turns the logs of AI agents into Thoth behavioral events and
//! ships them to the Thoth ingest API without losing any.
//!
//! The pipeline: [`source`] reads records, [`parse`] turns them into
//! [`event`]s, [`queue`] holds them durably with each source's checkpoint, and
//! [`flush`] delivers them within the tenant's request budget. [`pipeline`]
//! wires the stages together; [`receiver`] is a local stand-in for the API.

pub mod config;
pub mod event;
pub mod flush;
pub mod ops;
pub mod parse;
pub mod pipeline;
pub mod private_fs;
pub mod queue;
pub mod receiver;
pub mod source;
