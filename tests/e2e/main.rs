//! weir's end-to-end tests: real components (built from this workspace by
//! `weir-tests`' build script), the real `weir` binary.

mod api;
mod author;
mod bad_state;
mod broker;
mod cluster;
mod common;
mod console;
mod crash;
mod examples;
mod hardening;
mod hot_swap;
mod kafka;
mod peers;
mod races;
mod sandbox;
mod serve_cli;
mod server;
mod time;
mod timers;
