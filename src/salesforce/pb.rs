//! The generated Pub/Sub API types (`eventbus.v1`, from the `pubsub-proto` crate, which the
//! simulator shares). Only the Pub/Sub client uses these; everything else works with the domain
//! types of [`super::event`].

pub use pubsub_proto::*;
