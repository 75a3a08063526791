//! (to be written)

use std::sync::Arc;

use fraud_service::Shutdown;

use crate::AppState;

/// Starts this part as tasks of `shutdown`.
pub fn spawn(_state: Arc<AppState>, _shutdown: &Shutdown) -> anyhow::Result<()> {
    Ok(())
}
