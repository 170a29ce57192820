//! The Salesforce client: OAuth ([`auth`]), the REST calls the daemon makes ([`rest`]), the
//! Pub/Sub API stream client ([`pubsub`]), the platform event's codec ([`event`]) and the
//! Pub/Sub API types ([`pb`]).
//!
//! A pure client: nothing here touches the ledger, the queue or event intake. Callers see domain
//! types and classified errors; the generated protobuf types stay in [`pb`] and [`pubsub`].

pub mod auth;
pub mod event;
pub mod pb;
pub mod pubsub;
pub mod rest;
