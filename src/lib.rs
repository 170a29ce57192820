//! `provisioner`: turns Salesforce Order approvals (the `OrderProvisionRequested__e` platform
//! event) into provisioned WHMCS orders, exactly once, and reports back to Salesforce and to the
//! customer portal. See `docs/ARCHITECTURE.md` for the design and its invariants.

pub mod alert;
pub mod app;
pub mod bench;
pub mod chaos;
pub mod check;
pub mod cli;
pub mod commands;
pub mod config;
pub mod dashboard;
pub mod demo;
pub mod error;
pub mod http;
pub mod ids;
pub mod leader;
pub mod ledger;
pub mod lenient;
pub mod metrics;
pub mod net;
pub mod ops;
pub mod queue;
pub mod reconciler;
pub mod salesforce;
pub mod sim;
pub mod telemetry;
pub mod whmcs;
pub mod worker;
