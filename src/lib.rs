//! `provisioner`: turns Salesforce Order approvals (the `OrderProvisionRequested__e` platform
//! event) into provisioned WHMCS orders, exactly once, and reports back to Salesforce and to the
//! customer portal. See `docs/ARCHITECTURE.md` for the design and its invariants.

pub mod error;
pub mod ids;
pub mod salesforce;
pub mod sim;
