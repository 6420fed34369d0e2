//! The agent loop: watch the StorageCluster, and on every change, reader report or resync
//! tick run one pass — tune, hand the config to the reader, read its verdict, label and
//! taint the Node, write the StorageNode and the service settings, announce transitions.
//! When the cluster is being deleted, clean up instead (labels, taint, sysctl restore,
//! settings) and mark the StorageNode `Restored`. Errors become conditions, events and
//! retries; nothing in a pass makes the process exit.

use ringmaster_api::reasons;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Node, ObjectReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::{Client, ResourceExt};
use ringmaster_api::node_conditions as cond;
use ringmaster_api::{StorageCluster, StorageNode, StorageNodeStatus};

use super::desired::Desired;
use super::events::{self, Announced, NodeEvents, Transition};
use super::heartbeat;
use super::http::{self, Health};
use super::labels;
use super::node;
use super::report::{self, Observation};
use super::tuning::{ClusterTuning, TuneOutcome};
use super::watched::{self, View, Watched};
use super::RunArgs;
use crate::handoff::{self, ReaderConfig, ReaderReport};
use crate::settings;

/// The agent's memory between passes.
struct Agent {
    args: RunArgs,
    cluster_ref: String,
    nodes: Api<Node>,
    storage_nodes: Api<StorageNode>,
    /// This node's Node and StorageNode, from their watches and our own writes.
    node: View<Node>,
    storage_node: View<StorageNode>,
    tuner: ClusterTuning,
    events: NodeEvents,
    health: Arc<Health>,
    kernel: String,
    announced: Option<Announced>,
    /// Generation and hash last fully applied (reader answered, tuning pass done).
    applied: Option<(i64, String)>,
    /// Last config handed to the reader.
    config_written: Option<ReaderConfig>,
    /// The last cluster seen, for cleanup when it vanishes without a deletionTimestamp seen.
    last_desired: Option<Desired>,
    /// uid of the cluster already cleaned up (events and Restored once per incarnation).
    cleaned_uid: Option<String>,
    node_missing_announced: bool,
    reader_error_announced: Option<String>,
    /// A raise of fs.aio-max-nr not yet announced: the pass that raised it may have ended
    /// before the Node's watch listed it (no event can be sent about an unknown Node).
    raise_unannounced: Option<TuneOutcome>,
    /// The handoff dirs shared with the reader (`--state-dir`).
    handoff: handoff::Handoff,
    /// This boot (`crate::boot`): reports and state from another boot are stale.
    boot_id: Option<String>,
    /// Boot id of a reader report ignored as from another boot (logged once per value).
    ignored_boot: Option<String>,
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let (ns, name) = args.cluster.clone();
    crate::boot::warn_if_faked();
    let handoff = handoff::Handoff::open(&args.state_dir).with_context(|| {
        format!(
            "--state-dir {}: cannot create it (mount the shared emptyDir there)",
            args.state_dir.display()
        )
    })?;
    let health = Health::new(
        Duration::from_secs(args.resync_seconds * 4 + 60),
        &args.node_name,
        &format!("{ns}/{name}"),
    );
    let addr = SocketAddr::new(args.http_addr, args.http_port);
    let bound = http::serve(addr, health.clone()).await?;
    tracing::info!(%bound, node = %args.node_name, cluster = %format!("{ns}/{name}"), "agent HTTP endpoint listening");
    let addr_written = handoff.agent_dir(true).and_then(|d| match d {
        Some(d) => d.write_atomic(handoff::ADDR_FILE, bound.to_string().as_bytes()),
        None => Ok(()),
    });
    if let Err(e) = addr_written {
        tracing::warn!(error = %e, "cannot write agent.addr in the handoff dir");
    }

    if !args.seccomp_profile_dir.as_os_str().is_empty() {
        match super::seccomp::install(&args.seccomp_profile_dir) {
            Ok(p) => tracing::info!(path = %p.display(), "installed the Localhost seccomp profile"),
            Err(e) => tracing::warn!(
                error = %e,
                dir = %args.seccomp_profile_dir.display(),
                "cannot install the Localhost seccomp profile (mount the kubelet seccomp dir, or ignore if seccomp.type is not Localhost)"
            ),
        }
    }

    let client = Client::try_default()
        .await
        .context("no Kubernetes client config: run in a pod (in-cluster) or set KUBECONFIG")?;
    // One watch per object, each with this agent's spread timeout: a steady agent's only
    // requests are these watches' renewals and the heartbeat.
    let timeout = watched::spread_timeout(args.watch_timeout_seconds);
    let mut cluster_rx = watched::watch_named(
        Api::<StorageCluster>::namespaced(client.clone(), &ns),
        &name,
        timeout,
    );
    let node_rx = watched::watch_named(Api::<Node>::all(client.clone()), &args.node_name, timeout);
    let sn_rx = watched::watch_named(
        Api::<StorageNode>::all(client.clone()),
        &args.node_name,
        timeout,
    );
    let (mut node_changed, mut sn_changed) = (node_rx.clone(), sn_rx.clone());
    let kernel = rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned();
    let mut agent = Agent {
        cluster_ref: format!("{ns}/{name}"),
        nodes: Api::all(client.clone()),
        storage_nodes: Api::all(client.clone()),
        node: View::new(node_rx),
        storage_node: View::new(sn_rx),
        tuner: ClusterTuning {
            host_state_dir: args.host_state_dir.clone(),
            sysctl_d_dir: args.sysctl_d_dir.clone(),
        },
        events: NodeEvents::new(client.clone(), &args.node_name),
        health: health.clone(),
        kernel,
        announced: None,
        applied: None,
        config_written: None,
        last_desired: None,
        cleaned_uid: None,
        node_missing_announced: false,
        reader_error_announced: None,
        raise_unannounced: None,
        handoff,
        boot_id: crate::boot::boot_id(),
        ignored_boot: None,
        args,
    };

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut poll = tokio::time::interval(Duration::from_millis(agent.args.reader_poll_ms));
    let resync = Duration::from_secs(agent.args.resync_seconds);
    let mut next_pass = tokio::time::Instant::now();
    let mut last_reader_bytes: Result<Option<Vec<u8>>, String> = Ok(None);
    loop {
        tokio::select! {
            _ = sigterm.recv() => {
                // A rolling update: leave labels, taint and sysctl as they are.
                tracing::info!("SIGTERM: exiting without cleanup (cleanup happens only when the StorageCluster is deleted)");
                return Ok(());
            }
            r = cluster_rx.changed() => {
                if r.is_err() { anyhow::bail!("StorageCluster watch ended"); }
                next_pass = tokio::time::Instant::now();
            }
            // Somebody changed the Node (labels, taints, a reboot) or the StorageNode, or
            // the watch delivered our own write (a pass that then writes nothing).
            r = node_changed.changed() => {
                if r.is_err() { anyhow::bail!("Node watch ended"); }
                next_pass = tokio::time::Instant::now();
            }
            r = sn_changed.changed() => {
                if r.is_err() { anyhow::bail!("StorageNode watch ended"); }
                next_pass = tokio::time::Instant::now();
            }
            _ = poll.tick() => {
                let bytes = agent.report_bytes();
                if bytes != last_reader_bytes {
                    last_reader_bytes = bytes;
                    next_pass = tokio::time::Instant::now();
                }
            }
        }
        if tokio::time::Instant::now() < next_pass {
            continue;
        }
        let state = cluster_rx.borrow_and_update().clone();
        health.metrics.passes.inc();
        match agent.pass(state).await {
            Ok(()) => next_pass = tokio::time::Instant::now() + resync,
            Err(e) => {
                health.metrics.pass_errors.inc();
                tracing::warn!(error = %format!("{e:#}"), "agent pass failed; retrying in 2s");
                next_pass = tokio::time::Instant::now() + Duration::from_secs(2);
            }
        }
        health.pass_done();
    }
}

impl Agent {
    async fn pass(&mut self, state: Watched<StorageCluster>) -> anyhow::Result<()> {
        match state {
            Watched::Unknown => {
                self.health.set_ready(
                    false,
                    format!("listing StorageCluster {}", self.cluster_ref),
                );
                Ok(())
            }
            Watched::Absent => match self.last_desired.clone() {
                // Deleted without us seeing a deletionTimestamp (no finalizer): clean up all the same.
                Some(d) => self.cleanup(&d).await,
                None => {
                    self.health.set_ready(
                        false,
                        format!("StorageCluster {} does not exist", self.cluster_ref),
                    );
                    Ok(())
                }
            },
            Watched::Present(sc) => {
                let d = Desired::from_cluster(&sc);
                self.last_desired = Some(d.clone());
                if d.deleting {
                    self.cleanup(&d).await
                } else {
                    self.cleaned_uid = None;
                    self.apply(&d).await
                }
            }
        }
    }

    /// The raw report, to notice changes between passes (never blocks, never more than
    /// the cap: the reader controls that file).
    fn report_bytes(&self) -> Result<Option<Vec<u8>>, String> {
        let read = match self.handoff.reader_dir(false) {
            Ok(Some(d)) => d.read_untrusted(handoff::READER_FILE, handoff::MAX_FILE_BYTES),
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        };
        read.map_err(|e| e.to_string())
    }

    /// The reader's report, if it is of this boot. A refused or malformed file is the
    /// second value (a condition and an event, never a crash).
    fn read_report(&mut self) -> (Option<ReaderReport>, Option<String>) {
        let read = self.handoff.reader_dir(false).and_then(|d| match d {
            Some(d) => handoff::read_json::<ReaderReport>(&d, handoff::READER_FILE),
            None => Ok(None),
        });
        match read {
            Ok(Some(r)) if self.boot_id.is_some() && r.boot_id != self.boot_id => {
                if self.ignored_boot != r.boot_id {
                    tracing::info!(report_boot = ?r.boot_id, boot = ?self.boot_id, "ignoring a reader report from another boot; waiting for the reader");
                    self.ignored_boot = r.boot_id.clone();
                }
                (None, None)
            }
            Ok(r) => (r, None),
            Err(e) => (None, Some(e.to_string())),
        }
    }

    fn write_config(&mut self, d: &Desired) -> anyhow::Result<()> {
        let dir = self
            .handoff
            .agent_dir(true)?
            .context("the agent's handoff dir")?;
        let on_disk: Option<ReaderConfig> = handoff::read_json(&dir, handoff::CONFIG_FILE)
            .ok()
            .flatten();
        if on_disk.as_ref() != Some(&d.reader) {
            handoff::write_json(&dir, handoff::CONFIG_FILE, &d.reader).with_context(|| {
                format!(
                    "cannot hand {} to the reader in {}",
                    handoff::CONFIG_FILE,
                    dir.path().display()
                )
            })?;
            tracing::info!(generation = d.generation, hash = %d.config_hash, "handed config to the reader");
        }
        self.config_written = Some(d.reader.clone());
        Ok(())
    }

    /// What a watch of this node's `kind` holds; `None` (and not ready, saying why) until it
    /// has listed.
    fn listed<K>(&self, watched: Watched<K>, kind: &str) -> Option<Option<K>> {
        let listed = watched.listed();
        if listed.is_none() {
            self.health
                .set_ready(false, format!("listing {kind} {}", self.args.node_name));
        }
        listed
    }

    /// The Node from its watch; `None` (and not ready, saying why) while it is not listed
    /// yet or does not exist.
    async fn known_node(&mut self, about_cluster: &Desired) -> Option<Node> {
        let watched = self.node.current();
        let node = self.listed(watched, "Node")?;
        if node.is_none() {
            let msg = format!(
                "Node {} not found: check --node-name/NODE_NAME (downward API spec.nodeName)",
                self.args.node_name
            );
            self.health.set_ready(false, msg.clone());
            if !self.node_missing_announced {
                tracing::warn!("{msg}");
                let (ns, name) = about_cluster.cluster.split_once('/').unwrap_or_default();
                let regarding = ObjectReference {
                    api_version: Some(format!(
                        "{}/{}",
                        ringmaster_api::GROUP,
                        ringmaster_api::VERSION
                    )),
                    kind: Some("StorageCluster".into()),
                    namespace: Some(ns.into()),
                    name: Some(name.into()),
                    uid: Some(about_cluster.uid.clone()),
                    ..Default::default()
                };
                let t = Transition {
                    warning: true,
                    reason: reasons::NODE_NOT_FOUND,
                    action: "Report",
                    note: msg,
                };
                self.events.publish_about(&regarding, &t).await;
                self.node_missing_announced = true;
            }
        } else {
            self.node_missing_announced = false;
        }
        node
    }

    async fn apply(&mut self, d: &Desired) -> anyhow::Result<()> {
        let tune = self.tuner.ensure(&d.sysctl);
        if let Some(e) = &tune.error {
            tracing::warn!(error = %e, "fs.aio-max-nr not tuned");
        }
        if tune.changed {
            self.raise_unannounced = Some(tune.clone());
        }
        // A handoff that fails is announced like an unreadable report, under its own
        // reason; the pass goes on.
        let config_error = self.write_config(d).err().map(|e| format!("{e:#}"));
        let (report, reader_error) = self.read_report();
        let handoff_error = match (&config_error, &reader_error) {
            (Some(c), Some(r)) => Some(format!("{c}; {r}")),
            (c, r) => c.clone().or_else(|| r.clone()),
        };
        if handoff_error != self.reader_error_announced {
            if let Some(e) = &handoff_error {
                let reason = if config_error.is_some() {
                    tracing::warn!(error = %e, "cannot hand config.json to the reader");
                    reasons::CONFIG_HANDOFF_FAILED
                } else {
                    tracing::warn!(error = %e, "reader report unreadable");
                    reasons::READER_REPORT_INVALID
                };
                self.events
                    .publish(&Transition {
                        warning: true,
                        reason,
                        action: "Report",
                        note: e.clone(),
                    })
                    .await;
            }
            self.reader_error_announced = handoff_error;
        }
        let Some(node) = self.known_node(d).await else {
            return Ok(());
        };
        let watched = self.storage_node.current();
        let Some(existing) = self.listed(watched, "StorageNode") else {
            return Ok(());
        };
        self.events.set_uid(node.uid());
        let obs = Observation {
            node: &self.args.node_name,
            desired: d,
            tune: &tune,
            report: report.as_ref(),
            reader_error: reader_error.as_deref(),
            config_error: config_error.as_deref(),
            kernel: report
                .as_ref()
                .map(|r| r.host.kernel_release.as_str())
                .filter(|k| !k.is_empty())
                .unwrap_or(&self.kernel),
            io_uring_disabled: report.as_ref().and_then(|r| r.host.io_uring_disabled),
        };
        let verdict = obs.verdict();

        // Node labels and taint.
        let want_labels = labels::desired_labels(&verdict);
        let mut node = node;
        if let Some(written) =
            node::apply_labels(&self.nodes, &node, &want_labels, &d.cluster).await?
        {
            self.health.metrics.api_writes.inc();
            tracing::info!(labels = ?want_labels, "node labels applied");
            self.node.wrote(written.clone());
            node = written;
        }
        let taints = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        let want_taint = obs.want_taint();
        if labels::reconcile_taints(&taints, want_taint).is_some() {
            if let Some(written) = node::set_taint(&self.nodes, &node, want_taint).await? {
                self.health.metrics.api_writes.inc();
                tracing::info!(taint = want_taint, "node taint updated");
                self.node.wrote(written);
            }
        }

        // Verified settings for the storage service.
        if let Some(s) = obs.settings() {
            match s.write(&self.args.host_state_dir) {
                Ok(true) => {
                    tracing::info!(dir = %self.args.host_state_dir.display(), generation = s.generation, "wrote verified settings")
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, dir = %self.args.host_state_dir.display(), "cannot write aio.toml/aio.env")
                }
            }
        }
        if obs.report_current() {
            self.applied = Some((d.generation, d.config_hash.clone()));
        }

        // StorageNode.
        if self.announced.is_none() {
            // Seed from what was reported before a restart, so transitions are not re-announced.
            let prev = existing.as_ref().and_then(|s| s.status.as_ref());
            self.announced = Some(Announced {
                io_uring_supported: prev.and_then(|s| s.io_uring.as_ref()).map(|i| i.supported),
                tune_error: None,
                data_dirs_unavailable: prev.map(|s| {
                    let mut names: Vec<String> = s
                        .data_dirs
                        .iter()
                        .filter(|d| !d.available)
                        .map(|d| d.name.clone())
                        .collect();
                    names.sort();
                    names
                }),
            });
            if self.applied.is_none() {
                self.applied = prev
                    .and_then(|s| Some((s.applied_generation?, s.applied_config_hash.clone()?)));
            }
        }
        let spec_right = existing.as_ref().is_some_and(|s| {
            s.spec.cluster == d.cluster
                && s.owner_references()
                    .iter()
                    .any(|o| o.kind == "Node" && Some(&o.uid) == node.uid().as_ref())
        });
        if !spec_right {
            let written = node::apply_storage_node(&self.storage_nodes, &node, &d.cluster).await?;
            self.storage_node.wrote(written);
            self.health.metrics.api_writes.inc();
        }
        let prev_status = existing.as_ref().and_then(|s| s.status.as_ref());
        let prev_boot = prev_status.and_then(|s| s.boot_id.clone());
        let now = Timestamp::now();
        let mut status = obs.status(prev_status, self.applied.as_ref(), now);
        let write = heartbeat::stamp(
            &mut status,
            prev_status,
            !spec_right,
            self.boot_id.as_deref(),
            self.args.heartbeat_seconds,
            self.args.resync_seconds,
            now,
        );
        if write != heartbeat::Write::Nothing {
            let written =
                node::apply_status(&self.storage_nodes, &self.args.node_name, &status).await?;
            self.storage_node.wrote(written);
            if write == heartbeat::Write::Content {
                self.health.metrics.api_writes.inc();
                let changed = super::report::changed_fields(prev_status, &status);
                tracing::info!(generation = ?status.applied_generation, verdict = ?verdict, ?changed, "StorageNode status applied");
            } else {
                self.health.metrics.heartbeats.inc();
            }
        }
        if let (Some(before), Some(now)) = (&prev_boot, &self.boot_id) {
            if before != now {
                let note = format!(
                    "node {} booted again since the last report (boot id {before} -> {now}): the earlier report no longer holds; tuned again, the reader probes again",
                    self.args.node_name
                );
                tracing::info!("{note}");
                self.events
                    .publish(&Transition {
                        warning: false,
                        reason: "NodeRebooted",
                        action: "Report",
                        note,
                    })
                    .await;
            }
        }

        // Events, metrics, readiness.
        let announced = self.announced.get_or_insert_with(Default::default);
        let message = report.as_ref().and_then(|r| r.io_uring.message.clone());
        let dirs = obs.data_dirs_verdict();
        // This pass announces a raise an earlier pass made but could not report.
        let tune_announced = match self.raise_unannounced.take() {
            Some(raised) if !tune.changed => TuneOutcome {
                changed: true,
                original: tune.original.or(raised.original),
                ..tune.clone()
            },
            _ => tune.clone(),
        };
        for t in events::transitions(
            announced,
            &verdict,
            message.as_deref(),
            &tune_announced,
            dirs.as_ref(),
        ) {
            self.events.publish(&t).await;
        }
        let m = &self.health.metrics;
        m.io_uring_supported
            .set(i64::from(verdict.io_uring_supported == Some(true)));
        m.aio_tuned.set(i64::from(tune.tuned));
        m.node_ready.set(i64::from(verdict.ready));
        m.set_verdict(verdict.io_uring_supported);
        m.aio_max_nr.set(tune.current as i64);
        m.aio_max_nr_required.set(tune.required as i64);
        m.aio_nr.set(tune.aio_nr as i64);
        let sizing = &d.sysctl.sizing;
        m.aio_process_events
            .set(i64::from(sizing.workers) * i64::from(sizing.max_events));
        m.last_report_timestamp.set(http::unix_now());
        m.applied_generation
            .set(self.applied.as_ref().map_or(0, |a| a.0));
        let ready_reason = if obs.agent_ready() {
            format!("generation {} applied", d.generation)
        } else if let Some(e) = &tune.error {
            e.clone()
        } else if !obs.report_current() {
            format!(
                "waiting for the reader to answer generation {}",
                d.generation
            )
        } else if let Some(e) = report.as_ref().and_then(|r| r.error.clone()) {
            e
        } else {
            "the reader is not serving".into()
        };
        self.health.set_ready(obs.agent_ready(), ready_reason);
        Ok(())
    }

    /// The cluster is going: remove our labels and taint, restore the sysctl when asked,
    /// drop the settings files, and say so on the StorageNode (`Restored`).
    async fn cleanup(&mut self, d: &Desired) -> anyhow::Result<()> {
        let first = self.cleaned_uid.as_deref() != Some(d.uid.as_str());
        let watched = self.node.current();
        let Some(node) = self.listed(watched, "Node") else {
            return Ok(());
        };
        let watched = self.storage_node.current();
        let Some(sn) = self.listed(watched, "StorageNode") else {
            return Ok(());
        };
        if let Some(mut node) = node.clone() {
            if let Some(written) =
                node::apply_labels(&self.nodes, &node, &Default::default(), &d.cluster).await?
            {
                self.health.metrics.api_writes.inc();
                self.node.wrote(written.clone());
                node = written;
            }
            if let Some(written) = node::set_taint(&self.nodes, &node, false).await? {
                self.health.metrics.api_writes.inc();
                self.node.wrote(written);
            }
        }
        if !first {
            return Ok(());
        }
        let (restored_ok, message) = if d.restore_on_delete {
            match self.tuner.restore() {
                Ok(what) => (true, format!("labels and taint removed; {what}")),
                Err(e) => (
                    false,
                    format!("labels and taint removed; restoring fs.aio-max-nr failed: {e}"),
                ),
            }
        } else {
            (
                true,
                "labels and taint removed; fs.aio-max-nr left as is (sysctl.restoreOnDelete is false)"
                    .into(),
            )
        };
        if let Err(e) = settings::remove(&self.args.host_state_dir) {
            tracing::warn!(error = %e, "cannot remove aio.toml/aio.env");
        }
        if let Some(sn) = sn {
            let mut status: StorageNodeStatus = sn.status.unwrap_or_default();
            status.conditions.retain(|c| c.type_ != cond::RESTORED);
            let mut c = report::restored_condition(message.clone(), Timestamp::now());
            if !restored_ok {
                c.status = "False".into();
                c.reason = reasons::RESTORE_FAILED.into();
            }
            status.conditions.push(c);
            if let (Some(aio), Ok(now)) = (
                status.aio.as_mut(),
                std::fs::read_to_string("/proc/sys/fs/aio-max-nr"),
            ) {
                aio.current = now.trim().parse().unwrap_or(aio.current);
                aio.tuned = aio.current >= aio.required;
            }
            let written =
                node::apply_status(&self.storage_nodes, &self.args.node_name, &status).await?;
            self.storage_node.wrote(written);
            self.health.metrics.api_writes.inc();
        }
        if node.is_some() {
            self.events
                .publish(&Transition {
                    warning: !restored_ok,
                    reason: if restored_ok {
                        reasons::RESTORED
                    } else {
                        reasons::RESTORE_FAILED
                    },
                    action: "Cleanup",
                    note: format!("StorageCluster {} deleted: {message}", d.cluster),
                })
                .await;
        }
        tracing::info!(cluster = %d.cluster, "{message}");
        self.cleaned_uid = Some(d.uid.clone());
        self.announced = Some(Announced::default());
        self.applied = None;
        self.health.set_ready(restored_ok, message);
        Ok(())
    }
}
