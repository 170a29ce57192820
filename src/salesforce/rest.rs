//! Placeholder until the REST client lands.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct OrderFieldNames {
    pub activation_status: String,
    pub whmcs_order_id: String,
    pub error_code: String,
    pub error_message: String,
    pub last_attempt_at: String,
    pub account_whmcs_client_id: String,
    pub product_whmcs_product_id: String,
    pub product_whmcs_billing_cycle: String,
}
