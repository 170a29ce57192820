//! The Salesforce client: OAuth ([`auth`]), the REST calls the daemon makes ([`rest`]), the
//! platform event's codec ([`event`]) and the Pub/Sub API types ([`pb`]).
//!
//! A pure client: nothing here touches the ledger or the queue. Callers see domain types and
//! classified errors; the generated protobuf types stay in [`pb`].

pub mod auth;
pub mod event;
pub mod pb;
pub mod rest;
