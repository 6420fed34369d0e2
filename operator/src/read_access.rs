//! Who may read a cluster's data: the I/O shell around `render::read_token_secret` and
//! `render::network_policy`. The operator may only `create` Secrets (never read one), so the
//! token Secret is created when missing (409: it exists, left alone) and again every
//! `--read-access-recheck` in case it was deleted; the NetworkPolicy is server-side applied when
//! its rendered hash changes, and again every recheck (an edit by hand is put back). A steady
//! cluster costs no writes between rechecks. Both are owned by the
//! StorageCluster: the garbage collector removes them with it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, ResourceExt};
use ringmaster_api::{keys, StorageCluster};
use tracing::info;

use crate::render::{self, ClusterId};

/// Bytes of randomness in a read token (sent as twice as many hex characters).
pub const TOKEN_BYTES: usize = 32;

struct Memo {
    uid: String,
    secret_checked: Instant,
    policy_hash: Option<String>,
    policy_applied: Instant,
}

/// What was last made sure of, per cluster (no watch: the operator may not list Secrets).
#[derive(Default)]
pub struct ReadAccess {
    memo: Mutex<HashMap<ObjectRef<StorageCluster>, Memo>>,
}

fn fresh_token() -> String {
    let mut b = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut b).expect("the kernel's random source");
    render::hex_token(&b)
}

impl ReadAccess {
    /// Makes sure `sc` has its read-token Secret and its NetworkPolicy as rendered.
    pub async fn ensure(
        &self,
        client: &Client,
        sc: &StorageCluster,
        id: &ClusterId,
        recheck: Duration,
    ) -> Result<(), kube::Error> {
        let key = ObjectRef::from_obj(sc);
        let uid = sc.uid().unwrap_or_default();
        let now = Instant::now();
        let (check_secret, old_hash) = {
            let memo = self.memo.lock().unwrap();
            match memo.get(&key).filter(|m| m.uid == uid) {
                Some(m) => (
                    now.duration_since(m.secret_checked) >= recheck,
                    (now.duration_since(m.policy_applied) < recheck)
                        .then(|| m.policy_hash.clone())
                        .flatten(),
                ),
                None => (true, None),
            }
        };
        if check_secret {
            let secrets: Api<Secret> = Api::namespaced(client.clone(), &id.namespace);
            let secret = render::read_token_secret(sc, id, &fresh_token());
            match secrets.create(&PostParams::default(), &secret).await {
                Ok(_) => info!(cluster = %id.key(), "created Secret {}", id.read_token_name()),
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e),
            }
        }
        let np = render::network_policy(sc, id);
        let hash = render::live_hash(&np).map(str::to_string);
        let apply_policy = hash.is_none() || hash != old_hash;
        if apply_policy {
            let api: Api<NetworkPolicy> = Api::namespaced(client.clone(), &id.namespace);
            api.patch(
                &id.agent_name(),
                &PatchParams::apply(keys::MANAGER_OPERATOR).force(),
                &Patch::Apply(&np),
            )
            .await?;
            info!(cluster = %id.key(), "applied NetworkPolicy {}", id.agent_name());
        }
        let mut memo = self.memo.lock().unwrap();
        let m = memo.entry(key).or_insert_with(|| Memo {
            uid: uid.clone(),
            secret_checked: now,
            policy_hash: None,
            policy_applied: now,
        });
        if m.uid != uid {
            m.uid = uid;
        }
        if check_secret {
            m.secret_checked = now;
        }
        if apply_policy {
            m.policy_hash = hash;
            m.policy_applied = now;
        }
        Ok(())
    }
}
