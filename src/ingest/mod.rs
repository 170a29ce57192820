//! Event intake: the leader's Pub/Sub subscriber, which turns each platform event into a
//! durably enqueued job and records it in the ledger ([`subscriber`]), and the Redis lease that
//! decides which replica is the leader and fences its cursor writes ([`lease`]).

pub mod lease;
pub mod subscriber;
