//! Leader election on a `coordination.k8s.io` Lease (kube-lease-manager): only the
//! holder runs the controller; a replica that loses the Lease exits so it can never
//! write beside the new leader.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

/// Lease settings from the command line.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    /// How long a lease stays valid without renewal (failover time after a crash).
    pub duration: Duration,
    /// Renew this long before expiry.
    pub grace: Duration,
}

/// A running election: `is_leader` follows the Lease; dropping it releases the Lease.
pub struct Election {
    pub is_leader: watch::Receiver<bool>,
    pub task: JoinHandle<Result<kube_lease_manager::LeaseManager, LeaseManagerError>>,
}

pub async fn start(client: Client, s: &LeaseSettings) -> Result<Election, LeaseManagerError> {
    let manager = LeaseManagerBuilder::new(client, &s.name)
        .with_namespace(&s.namespace)
        .with_identity(&s.identity)
        .with_duration(s.duration.as_secs())
        .with_grace(s.grace.as_secs())
        .build()
        .await?;
    let (is_leader, task) = manager.watch().await;
    info!(lease = %format!("{}/{}", s.namespace, s.name), identity = %s.identity, "leader election started");
    Ok(Election { is_leader, task })
}

impl Election {
    /// Resolves once this replica holds the Lease.
    pub async fn acquired(&mut self) -> bool {
        self.is_leader.wait_for(|l| *l).await.is_ok()
    }

    /// Resolves when this replica no longer holds the Lease.
    pub async fn lost(&mut self) {
        let _ = self.is_leader.wait_for(|l| !*l).await;
    }

    /// Give the Lease back (on shutdown) so the other replica takes over at once.
    pub async fn release(self) {
        drop(self.is_leader);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}
