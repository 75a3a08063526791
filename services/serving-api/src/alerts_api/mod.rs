//! (to be written)

use std::sync::Arc;

use axum::Router;

use crate::AppState;

/// The routes of this part of the API.
pub fn routes(_state: Arc<AppState>) -> Router {
    Router::new()
}
