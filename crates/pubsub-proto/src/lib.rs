//! The Salesforce Pub/Sub API (`eventbus.v1`) as generated Rust: messages, the tonic client the
//! daemon subscribes with and the tonic server the simulator serves.
//!
//! Generated from `proto/pubsub_api.proto` at build time; nothing here is written by hand, so
//! the daemon and the simulator can never disagree about a field number.
#![allow(clippy::all, clippy::pedantic, missing_docs)]

tonic::include_proto!("eventbus.v1");
