//! What the queue workers run: the provisioning job ([`provision`]) behind the dependency gate
//! ([`gate`]), its per-step audit trail ([`steps`]), and the retry policy every retry in the
//! daemon follows ([`retry`]).

pub mod gate;
pub mod provision;
pub mod retry;
pub mod steps;
