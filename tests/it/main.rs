//! Integration tests: the real daemon (in-process) against the simulator over loopback, a real
//! Redis (unique queue name per test) and a fresh SQLite file or PostgreSQL schema per test.

mod clients;
mod commands;
mod crash_windows;
mod dashboard;
mod deploy;
mod durability;
mod exactly_once;
mod forward_proxy;
mod helpers;
mod http;
mod http_exposure;
mod http_hostile;
mod observability;
mod operator;
mod ops;
mod outages;
mod pipeline;
mod process;
mod proxy;
mod queue;
mod redrive;
mod replicas;
mod status_view;
mod subscriber;
mod tls;
mod whmcs_compat;
mod writeback;
