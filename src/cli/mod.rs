//! The commands of the `thoth-ingest` binary, one module each; `main.rs`
//! parses the command line and dispatches here. What they share is the
//! async runtime of the commands that need one.

pub mod dead_letter;
pub mod demo;
pub mod parse;
pub mod progress;
pub mod receiver;
pub mod reload;
pub mod replay;
pub mod run;
pub mod status;
pub mod validate;

use anyhow::Context;

pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
