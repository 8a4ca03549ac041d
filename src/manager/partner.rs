//! The link to the partner manager (`-p`): a sync every [`SYNC_INTERVAL`] and right after every
//! change of this manager's state. Each sync sends this manager's state and view and joins the
//! partner's answer, so both directions converge in one round trip. A partner that does not answer
//! costs one failed call per round; the pair logic (see [`crate::cluster::pair`]) decides from the
//! time of the last successful exchange, and from what servers say of the partner, who drives. An
//! answer also renews the first manager's lease, counted from when the sync was sent.

use std::rc::Rc;
use std::time::Duration;

use futures_lite::future;
use glommio::channels::local_channel::LocalReceiver;

use super::service::{ManagerClient, ManagerService};
use crate::runtime::{self, ShutdownSignal};

/// Syncs at least this often, so a partner that restarted or missed a change catches up.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(500);

/// Runs until `stop` fires.
pub(super) async fn sync_loop(
    service: Rc<ManagerService>,
    partner: ManagerClient,
    woken: LocalReceiver<()>,
    stop: ShutdownSignal,
) {
    let mut reachable = true;
    while !stop.is_fired() {
        let ok = sync_once(&service, &partner).await;
        if ok != reachable {
            if ok {
                crate::info!("manager: partner {} is reachable", partner.addr());
            } else {
                crate::warn!("manager: partner {} is unreachable", partner.addr());
            }
            reachable = ok;
        }
        let _ = future::or(
            async {
                woken.recv().await;
            },
            future::or(
                async {
                    runtime::sleep(SYNC_INTERVAL).await;
                },
                stop.wait(),
            ),
        )
        .await;
    }
}

/// One exchange with the partner; returns whether it answered.
pub(super) async fn sync_once(service: &Rc<ManagerService>, partner: &ManagerClient) -> bool {
    let request = service.sync_request();
    // When we asked: the partner's answer proves it follows from then on (the pair's lease).
    let asked = service.now();
    match partner.call(&request).await {
        Ok(response) => {
            service.partner_answered(response, asked);
            true
        }
        Err(_) => false,
    }
}
