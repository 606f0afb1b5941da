//! The integration tests, as one binary: each file used to link a binary of
//! its own (some 20 s each). The timing-sensitive ones (budget,
//! fleet_daemons, rotation) keep binaries of their own, so they run alone.

mod admin;
mod cli;
mod common;
mod delivery;
mod delivery_errors;
mod enospc;
mod fleet;
mod hostile_network;
mod hostile_users;
mod isolation;
mod journald;
mod layout;
mod network_scripts;
mod parse_cli;
mod parse_presets;
mod parse_restart;
mod parse_rules;
mod provenance;
mod receiver;
mod redaction_corpus;
mod reload;
mod replay;
mod service;
mod tailer_files;
mod tailer_model;
mod tls_proxy;
