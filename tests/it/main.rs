//! Integration tests: the real daemon (in-process) against the simulator over loopback, a real
//! Redis (unique queue name per test) and a fresh SQLite file or PostgreSQL schema per test.

mod clients;
mod crash_windows;
mod dashboard;
mod deploy;
mod helpers;
mod http;
mod http_hostile;
mod observability;
mod ops;
mod outages;
mod pipeline;
mod process;
mod queue;
mod replicas;
mod subscriber;
