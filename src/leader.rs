//! Leader election through a coordination.k8s.io Lease, so several operator
//! replicas can run and exactly one reconciles.

use std::time::{Duration, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info};

/// Lease validity in seconds; a new leader takes over at most this long after
/// the old one stopped renewing.
pub const LEASE_DURATION_SECONDS: u64 = 15;
/// The holder renews this many seconds before expiry: every 5 s, so a
/// renewal has 7 s to be written and seen before the leader stops (see
/// [`STOP_MARGIN`]); a busy machine or API server does not make it stop.
pub const LEASE_GRACE_SECONDS: u64 = 10;
/// A leader that has not seen its own renewal stops this long before the
/// lease it last renewed expires, so no other replica leads while it still
/// writes.
pub const STOP_MARGIN: Duration = Duration::from_secs(3);

pub struct Election {
    state: watch::Receiver<bool>,
    task: JoinHandle<kube_lease_manager::Result<LeaseManager>>,
}

impl Election {
    /// Starts competing for the lease in the background.
    pub async fn start(
        client: Client,
        namespace: &str,
        lease: &str,
        identity: &str,
    ) -> kube_lease_manager::Result<Self> {
        let manager = LeaseManagerBuilder::new(client, lease)
            .with_namespace(namespace)
            .with_identity(identity)
            .with_duration(LEASE_DURATION_SECONDS)
            .with_grace(LEASE_GRACE_SECONDS)
            .build()
            .await?;
        let (state, task) = manager.watch().await;
        Ok(Self { state, task })
    }

    /// Resolves once this replica holds the lease.
    pub async fn acquired(&mut self) {
        while !*self.state.borrow_and_update() {
            if self.state.changed().await.is_err() {
                // The manager task ended; wait forever rather than lead without a lease.
                std::future::pending::<()>().await;
            }
        }
        info!("acquired the leader lease");
    }

    /// Resolves when this replica no longer holds the lease.
    pub async fn lost(&mut self) {
        while *self.state.borrow_and_update() {
            if self.state.changed().await.is_err() {
                return;
            }
        }
    }

    /// Gives the lease up so a standby replica takes over at once.
    pub async fn release(self) {
        drop(self.state);
        match self.task.await {
            Ok(Ok(manager)) => {
                if let Err(e) = manager.release().await {
                    tracing::warn!(error = %e, "could not release the leader lease");
                } else {
                    info!("released the leader lease");
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "leader election ended with an error"),
            Err(e) => tracing::warn!(error = %e, "leader election task failed"),
        }
    }
}

/// Until when the lease is this replica's, as the lease says: its last
/// renewal plus its duration. `None` when another identity holds it.
pub fn valid_until(lease: &Lease, identity: &str) -> Option<SystemTime> {
    renewal(lease, identity).map(|(_, until)| until)
}

/// This replica's last renewal of the lease and until when it holds: `None`
/// when another identity holds it, or the lease says no time.
fn renewal(lease: &Lease, identity: &str) -> Option<(SystemTime, SystemTime)> {
    let spec = lease.spec.as_ref()?;
    if spec.holder_identity.as_deref() != Some(identity) {
        return None;
    }
    let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref())?;
    let duration = u64::try_from(spec.lease_duration_seconds.unwrap_or(LEASE_DURATION_SECONDS as i32)).ok()?;
    let renewed = SystemTime::UNIX_EPOCH + Duration::from_micros(u64::try_from(renewed.0.as_microsecond()).ok()?);
    Some((renewed, renewed + Duration::from_secs(duration)))
}

/// Whether a leader whose lease is valid until `until` must stop now.
pub fn must_stop(until: SystemTime, now: SystemTime) -> bool {
    now + STOP_MARGIN >= until
}

/// Resolves when this replica can no longer show that it holds the lease a
/// little longer: the lease election cannot report a renewal that fails (an
/// unreachable API server), while another replica takes the lease over once
/// it expires. The lease is watched, so this costs no polling; only when the
/// watch shows no renewal in time is the Lease read once before giving up.
/// Returns what was seen last, for the log: a leader that stops says why.
pub async fn unconfirmed(client: Client, namespace: String, name: String, identity: String) -> String {
    let api: Api<Lease> = Api::namespaced(client, &namespace);
    // Until when the lease holds, and the renewal seen that says so (none
    // before the first).
    let (tx, rx) = watch::channel((SystemTime::now() + Duration::from_secs(LEASE_DURATION_SECONDS), None));
    let identity_owned = identity.clone();
    let renewals = watcher(api.clone(), watcher::Config::default().fields(&format!("metadata.name={name}")))
        .default_backoff()
        .applied_objects()
        .for_each(move |lease| {
            match lease.map(|l| renewal(&l, &identity_owned)) {
                Ok(Some((renewed, until))) => {
                    tx.send_if_modified(|known| {
                        let newer = until > known.0;
                        if newer {
                            *known = (until, Some(renewed));
                            debug!(valid_for = ?until.duration_since(SystemTime::now()).ok(), "saw the leader lease renewed");
                        }
                        newer
                    });
                }
                Ok(None) => debug!("the leader lease shows no renewal by this replica"),
                // The watch retries with a backoff; the deadline below decides.
                Err(e) => debug!(error = %e, "watching the leader lease"),
            }
            futures::future::ready(())
        });
    let deadline = async {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut confirmed = (SystemTime::UNIX_EPOCH, None);
        loop {
            tick.tick().await;
            let watched = *rx.borrow();
            let (until, renewed) = if watched.0 >= confirmed.0 { watched } else { confirmed };
            if !must_stop(until, SystemTime::now()) {
                continue;
            }
            // The watch may only be late (a busy process or API server): ask
            // once directly before stopping.
            let seen = match renewed {
                Some(renewed) => {
                    let ago = SystemTime::now().duration_since(renewed).unwrap_or_default();
                    format!("the last renewal seen was {:.1} s ago", ago.as_secs_f64())
                }
                None => "no renewal was seen since leading began".to_string(),
            };
            let read = match tokio::time::timeout(STOP_MARGIN / 2, api.get_opt(&name)).await {
                Err(_) => format!("reading the Lease took over {:?}", STOP_MARGIN / 2),
                Ok(Err(e)) => format!("reading the Lease failed: {e}"),
                Ok(Ok(None)) => "the Lease is gone".to_string(),
                Ok(Ok(Some(lease))) => match renewal(&lease, &identity) {
                    Some((renewed, until)) if !must_stop(until, SystemTime::now()) => {
                        confirmed = (until, Some(renewed));
                        continue;
                    }
                    Some(_) => "the Lease read shows no later renewal".to_string(),
                    None => format!(
                        "the Lease is held by {}",
                        lease.spec.and_then(|s| s.holder_identity).unwrap_or_else(|| "nobody".into())
                    ),
                },
            };
            return format!("{seen}; {read}");
        }
    };
    tokio::select! {
        _ = renewals => "the watch of the leader lease ended".to_string(),
        why = deadline => why,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    fn lease(holder: &str, renewed_secs: i64) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                lease_duration_seconds: Some(15),
                renew_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::from_second(renewed_secs).unwrap())),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_lease_is_ours_until_its_renewal_plus_its_duration() {
        let until = valid_until(&lease("me", 1_000), "me").unwrap();
        assert_eq!(until, SystemTime::UNIX_EPOCH + Duration::from_secs(1_015));
        assert_eq!(valid_until(&lease("other", 1_000), "me"), None);
    }

    #[test]
    fn the_leader_stops_before_the_lease_can_pass() {
        let until = SystemTime::UNIX_EPOCH + Duration::from_secs(1_015);
        let at = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        assert!(!must_stop(until, at(1_010)));
        assert!(must_stop(until, at(1_012)), "three seconds before expiry at the latest");
        assert!(must_stop(until, at(1_020)));
    }
}
