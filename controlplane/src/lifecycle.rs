//! Whether this replica should get traffic: not while it drains (SIGTERM/SIGINT) and not
//! while its database is unreachable. One source for gRPC health, `/ready` and the streams.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use osgate_proto::ops::Readiness;
use osgate_proto::pb::fleet_server::FleetServer;
use tokio::sync::watch;
use tonic::server::NamedService;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::db::Db;
use crate::fleet::FleetService;

/// How often the database is probed, and how long one probe may take.
const PROBE_EVERY: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct Lifecycle {
    draining: watch::Sender<bool>,
    database_ok: AtomicBool,
    health: HealthReporter,
}

impl Lifecycle {
    pub fn new(health: HealthReporter) -> Self {
        Self {
            draining: watch::Sender::new(false),
            database_ok: AtomicBool::new(true),
            health,
        }
    }

    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Resolves when draining begins (at once if it has).
    pub async fn drain_begun(&self) {
        let mut draining = self.draining.subscribe();
        let _ = draining.wait_for(|d| *d).await;
    }

    /// Starts draining: health goes NOT_SERVING, node streams end, the listener closes.
    pub async fn begin_drain(&self) {
        self.draining.send_replace(true);
        self.publish().await;
    }

    /// `/ready`: the database answers and the replica is not draining.
    pub fn readiness(&self) -> Readiness {
        if self.is_draining() {
            return Err("draining".into());
        }
        match self.database_ok.load(Ordering::Relaxed) {
            true => Ok(()),
            false => Err("database unreachable".into()),
        }
    }

    /// Sets gRPC health for the server ("") and the fleet service from [`Self::readiness`].
    pub async fn publish(&self) {
        let status = match self.readiness() {
            Ok(()) => ServingStatus::Serving,
            Err(_) => ServingStatus::NotServing,
        };
        self.health.set_service_status("", status).await;
        self.health
            .set_service_status(<FleetServer<FleetService> as NamedService>::NAME, status)
            .await;
    }

    /// Probes the database with a cheap query, forever, publishing every change.
    pub async fn probe_database(&self, db: &Db) {
        let mut tick = tokio::time::interval(PROBE_EVERY);
        loop {
            tick.tick().await;
            let probe = sqlx::query("SELECT 1").execute(&db.pool);
            let error = match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!("no answer in {PROBE_TIMEOUT:?}")),
            };
            let ok = error.is_none();
            if self.database_ok.swap(ok, Ordering::Relaxed) == ok {
                continue;
            }
            // Logged once gRPC health says so.
            self.publish().await;
            match error {
                Some(error) => {
                    tracing::warn!(error, "database unreachable: gRPC health NOT_SERVING")
                }
                None => tracing::info!("database reachable again: gRPC health SERVING"),
            }
        }
    }
}
