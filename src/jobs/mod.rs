//! What the queue workers run: the provisioning job ([`provision`]) and the retry policy every
//! retry in the daemon follows ([`retry`]).

pub mod provision;
pub mod retry;
