//! Everything that talks to Salesforce: OAuth, the Pub/Sub subscriber, the REST client and the
//! platform-event codec. Callers outside this module see domain types only; the generated
//! protobuf types stay in [`pb`] (shared with the simulator, which serves the same proto).

pub mod auth;
pub mod event;
pub mod pb;
pub mod rest;
pub mod subscriber;
