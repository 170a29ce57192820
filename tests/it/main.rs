//! Integration tests: the real daemon (in-process) against the simulator over loopback, a real
//! Redis (unique queue name per test) and a fresh SQLite file or PostgreSQL schema per test.

mod clients;
mod helpers;
mod http;
mod pipeline;
mod process;
mod queue;
mod subscriber;
