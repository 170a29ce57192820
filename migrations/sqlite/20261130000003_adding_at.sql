-- When the `adding` intent of an AddOrder that may still be running in WHMCS was committed
-- (epoch milliseconds, the database's clock). NULL once that AddOrder is known to have ended
-- (WHMCS answered, or the request was never sent). A run that finds it set sends no new
-- AddOrder until WHMCS_TIMEOUT_SECS + WHMCS_EXECUTION_ALLOWANCE_SECS have passed since.
ALTER TABLE orders ADD COLUMN adding_at BIGINT;
