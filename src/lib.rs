//! thoth-ingest: turns the logs of AI agents into Thoth behavioral events and
//! ships them to the Thoth ingest API without losing any.
//!
//! The pipeline: a [`source`] reads records and hands them to its [`stage`],
//! where [`parse`] turns them into [`event`]s and [`queue`] holds them
//! durably with the source's checkpoint; [`flush`] delivers them within the
//! tenant's request budget. [`pipeline`] wires them together; [`admin`]
//! serves what it counts; [`receiver`] is a local stand-in for the API.

pub mod admin;
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
pub mod stage;
