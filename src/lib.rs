//! `provisioner`: turns Salesforce Order approvals (the `OrderProvisionRequested__e` platform
//! event) into provisioned WHMCS orders, exactly once, and reports back to Salesforce and to the
//! customer portal. See `docs/ARCHITECTURE.md` for the design, its invariants and a module map.
//!
//! The pipeline, top to bottom: [`ingest`] (Pub/Sub → queue → ledger) → [`queue`] →
//! [`jobs`] (guard → claim → WHMCS → write-back) → [`ledger`]; [`http`] serves what the ledger
//! knows. [`salesforce`] and [`whmcs`] are pure clients; [`daemon`] supervises the parts.

pub mod alert;
pub mod changes;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod deps;
pub mod error;
pub mod http;
pub mod ids;
pub mod ingest;
pub mod jobs;
pub mod ledger;
pub mod lenient;
pub mod metrics;
pub mod net;
pub mod operator;
pub mod pause;
pub mod queue;
pub mod reconciler;
pub mod runtime;
pub mod salesforce;
pub mod state;
pub mod status;
pub mod telemetry;
pub mod whmcs;
