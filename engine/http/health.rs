//! Liveness (`/health`: the process answers) and readiness (`/ready`: the pipeline runs and
//! the database answers), for load balancers and orchestrators.

use super::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use utoipa::ToSchema;

/// Longest the readiness probe waits for `SELECT 1` (including a pool checkout).
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// The `/ready` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// True when the pipeline accepts events and the database answers.
    pub ready: bool,
    /// Why it is not ready (absent when ready).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Seconds since the engine started.
    pub uptime_seconds: u64,
}

/// The process is up.
#[utoipa::path(get, path = "/health", tag = "health",
    responses((status = 200, description = "The process answers", body = String, content_type = "text/plain")))]
pub async fn health() -> &'static str {
    "ok"
}

/// Ready to serve: the pipeline is running and the database answers `SELECT 1` quickly.
#[utoipa::path(get, path = "/ready", tag = "health",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready; `reason` says why", body = Readiness)))]
pub async fn ready(State(s): State<Arc<AppState>>) -> Response {
    let uptime_seconds = s.engine.started.elapsed().as_secs();
    let reason = if !s.engine.is_ready() {
        Some("pipeline not running (starting or draining)".to_string())
    } else {
        probe(&s.pool).await.err()
    };
    let status = if reason.is_none() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Readiness {
        ready: reason.is_none(),
        reason,
        uptime_seconds,
    };
    (status, Json(body)).into_response()
}

/// `SELECT 1` within [`READY_TIMEOUT`]; the error is a reason fit for the answer.
async fn probe(pool: &crate::db::Pool) -> Result<(), String> {
    let check = async {
        let conn = pool
            .get()
            .await
            .map_err(|e| format!("database: no connection ({e})"))?;
        conn.query_one("SELECT 1", &[])
            .await
            .map(drop)
            .map_err(|e| format!("database: {e}"))
    };
    match tokio::time::timeout(READY_TIMEOUT, check).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "database: no answer to SELECT 1 within {}s",
            READY_TIMEOUT.as_secs()
        )),
    }
}
