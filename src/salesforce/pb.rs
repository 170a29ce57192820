//! Generated Pub/Sub API types (`eventbus.v1`). Only `salesforce` and the simulator use these;
//! everything else works with the domain types of `salesforce::event`.
#![allow(clippy::all, clippy::pedantic, missing_docs)]

tonic::include_proto!("eventbus.v1");
