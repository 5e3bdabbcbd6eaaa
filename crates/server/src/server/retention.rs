//! Retention: finished runs beyond the settings' limits are removed, with their
//! directories, at start and every hour.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::AppState;

use super::worker::run_dir;

/// Prunes old runs at start and every hour until `stop` (settings `retention_days`,
/// `retention_runs`).
pub async fn retention(st: Arc<AppState>, stop: CancellationToken) {
    loop {
        prune(&st).await;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// One pass of retention: finished runs beyond the limits go, with their directories.
pub async fn prune(st: &AppState) {
    let days = st.cfg.retention_days as i64;
    let pruned = st.db.prune(days * 86_400, st.cfg.retention_runs as i64, days.max(3) * 86_400).await;
    match pruned {
        Ok(ids) => {
            for id in &ids {
                let _ = tokio::fs::remove_dir_all(run_dir(&st.cfg, *id)).await;
            }
            if !ids.is_empty() {
                tracing::info!(runs = ids.len(), "retention: removed old runs");
            }
        }
        Err(e) => tracing::warn!("retention: {e}"),
    }
}
