//! The agent: source → model → diff → map writer, by level, until SIGTERM/SIGINT. On exit
//! it leaves programs and maps pinned, so traffic keeps flowing; the next agent adopts them
//! and writes only the difference. Beside it: metrics, kube-proxy's health endpoint and the
//! Services' health check ports, all told how fresh the maps are ([`SyncHealth`]).

pub mod reconcile;
#[cfg(test)]
mod stale_flow_tests;
pub mod stats;

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    dataplane::{
        AppliedState, MapCapacity,
        attach_mode::XdpMode,
        aya_maps::{AyaMaps, ReadOnlyMaps},
        cgroup::CgroupRoot,
        loader::{Datapath, DatapathOptions, IngressMode, interface_index},
        masquerade::{self, PortRange},
    },
    health::{BIND_RETRY, HealthError, ProxyHealthServer, ServiceHealthServers, SyncHealth},
    metrics::{Metrics, MetricsOptions, MetricsServer, TriggerTimes},
    model::{ModelConfig, NodeInfo},
    source::{
        self, SourceConfig, SourceProblem, SourceReceiver, UpdateCause,
        node::{interface_addresses, nodeport_addresses},
    },
};
use reconcile::Reconciler;

/// What the agent runs with (the command line's `slicelb agent`, or a test's own).
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Interfaces to balance on.
    pub ifaces: Vec<String>,
    /// Built with `SourceConfig::with_proxy_name(service_proxy_name)`, so that a Kubernetes
    /// watch lists the Services the model serves.
    pub source: SourceConfig,
    /// This node's name: decides which endpoints are local.
    pub node_name: Option<String>,
    /// NodePorts answer on local addresses within these CIDRs (all local addresses if empty).
    pub nodeport_cidrs: Vec<ipnet::IpNet>,
    pub pin_path: PathBuf,
    /// Prometheus metrics, /healthz and /readyz.
    pub metrics_addr: SocketAddr,
    /// What the metrics report (per-service series or not).
    pub metrics: MetricsOptions,
    /// kube-proxy's `/healthz` and `/livez`; none when `None`.
    pub healthz_addr: Option<SocketAddr>,
    /// An update not in the maps after this long makes the agent unhealthy.
    pub healthz_timeout: Duration,
    pub xdp_mode: XdpMode,
    /// Only Services labelled `service.kubernetes.io/service-proxy-name=NAME`; only
    /// unlabelled ones when `None` (`ModelConfig::serves`).
    pub service_proxy_name: Option<String>,
    /// Where the socket-level hooks attach (pods and the node's own processes).
    pub cgroup_root: CgroupRoot,
    /// Sizes of the maps made when none are pinned; pinned maps must have these sizes.
    pub capacity: MapCapacity,
    /// Source ports of masqueraded flows; no masquerade when `None`.
    pub masquerade_ports: Option<PortRange>,
    /// How long a masqueraded TCP flow closed by FIN keeps its port.
    pub masquerade_tcp_time_wait: Duration,
    /// The XDP fast path on (balanced packets leave from XDP where they can) or off.
    pub fast_path: bool,
    /// Devices the fast path may send frames out of (they must take redirected XDP frames).
    pub fast_path_ifaces: Vec<String>,
}

/// When a failed sync is tried again with the latest snapshot, if no update comes first: a
/// write that failed for a passing reason (the kernel out of memory for a moment, a map full
/// until flows expire) must not leave the node part-programmed until the cluster changes.
/// kube-proxy retries after its sync period (`RetryAfter`); this starts sooner and backs off.
#[derive(Debug, Default)]
struct SyncRetry {
    /// Failed syncs in a row.
    failures: u32,
}

impl SyncRetry {
    const FIRST: Duration = Duration::from_secs(1);
    const LONGEST: Duration = Duration::from_secs(30);

    /// After a failed sync: how long until the next try (1 s, doubling, at most 30 s).
    fn failed(&mut self) -> Duration {
        let wait = Self::FIRST
            .saturating_mul(1 << self.failures.min(5))
            .min(Self::LONGEST);
        self.failures += 1;
        wait
    }

    /// After a successful sync: nothing to try again, and the next failure starts at 1 s.
    fn succeeded(&mut self) {
        self.failures = 0;
    }
}

/// How often the agent deletes expired masquerade entries (SNAT). Well below the shortest
/// timeout (TCP transient, 10 s), so a closed flow's port is free again soon after.
const MASQUERADE_EXPIRY_INTERVAL: Duration = Duration::from_secs(5);

pub fn run(args: AgentConfig) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run_async(args))
}

async fn run_async(args: AgentConfig) -> anyhow::Result<()> {
    let node = NodeInfo {
        name: args.node_name.clone(),
        zone: None,
        nodeport_addresses: nodeport_addresses(&args.nodeport_cidrs)
            .context("listing this node's addresses for NodePorts")?,
    };
    tracing::info!(
        node = ?node.name,
        nodeport_addresses = ?node.nodeport_addresses,
        "starting"
    );

    let options = DatapathOptions {
        capacity: args.capacity,
        ..DatapathOptions::default()
    };
    let mut datapath = Datapath::open(&args.pin_path, &options).with_context(|| {
        format!(
            "loading the datapath pinned under {} (is bpffs mounted there? `slicelb detach --pin-path …` starts over)",
            args.pin_path.display()
        )
    })?;
    if let Some(migration) = datapath.migration() {
        if migration.dropped() > 0 {
            tracing::warn!(dropped = migration.dropped(), "{migration}");
        } else {
            tracing::info!("{migration}");
        }
    }
    let capacity = datapath.capacity();
    let writer = AyaMaps::from_datapath(&datapath).context("opening the maps")?;
    let mut reconciler = Reconciler::new(writer, model_config(&args))
        .context("reading the maps a previous agent left")?;
    let adopted = reconciler.applied().frontends.len();
    if adopted > 0 {
        tracing::info!(frontends = adopted, "adopted the maps of a previous agent");
    }
    // Before attaching: the new programs start with the devices they may send to.
    let fast_path_devices = args
        .fast_path_ifaces
        .iter()
        .map(|iface| match interface_index(iface) {
            Ok(0) => anyhow::bail!("--fast-path-iface {iface}: no such interface"),
            index => Ok(index?),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    datapath
        .set_fast_path(args.fast_path, &fast_path_devices)
        .context("writing the fast path settings")?;
    tracing::info!(
        on = args.fast_path && !fast_path_devices.is_empty(),
        devices = ?args.fast_path_ifaces,
        "XDP fast path (off without --fast-path-iface)"
    );
    // Attached once the adopted maps are indexed (`Reconciler::new`): until then the
    // programs of the previous agent keep running.
    for iface in &args.ifaces {
        let mode = args.xdp_mode.ingress_mode(iface);
        match datapath.attach(iface, mode) {
            Ok(()) => tracing::info!(iface, ?mode, "attached"),
            Err(error) if mode == IngressMode::XdpNative && args.xdp_mode == XdpMode::Auto => {
                tracing::warn!(iface, %error, "native XDP refused; balancing with TC instead");
                datapath
                    .attach(iface, IngressMode::Tc)
                    .with_context(|| format!("attaching to {iface}"))?;
            }
            Err(error) => {
                return Err(error).with_context(|| format!("attaching to {iface}"));
            }
        }
    }
    let masquerade_interfaces = args
        .ifaces
        .iter()
        .map(|iface| {
            let addresses = interface_addresses(iface)
                .with_context(|| format!("listing the addresses of {iface}"))?;
            Ok((
                interface_index(iface)?,
                masquerade::snat_addresses(&addresses),
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    datapath
        .set_masquerade(args.masquerade_ports, &masquerade_interfaces)
        .context("writing the masquerade settings")?;
    if let Some(ports) = args.masquerade_ports {
        tracing::info!(min = ports.min, max = ports.max, "masquerade ports");
        let snat = aya::maps::MapData::from_pin(
            args.pin_path.join("maps").join(lb_common::map_names::SNAT),
        )
        .context("opening the masquerade table")?;
        let config = datapath
            .config()
            .context("reading the datapath's timeouts")?;
        tokio::spawn(expire_masquerade(
            snat,
            config,
            args.masquerade_tcp_time_wait,
        ));
    }
    if let Some(cgroup) = args.cgroup_root.resolve()? {
        datapath
            .attach_cgroup(&cgroup)
            .with_context(|| format!("attaching the socket-level hooks at {}", cgroup.display()))?;
        tracing::info!(cgroup = %cgroup.display(), "socket-level balancing attached");
    }
    // Every link runs this agent's programs now: the maps a migration replaced can go.
    if let Some(caught_up) = datapath
        .retire_replaced_maps()
        .context("removing the maps replaced by a migration")?
    {
        tracing::info!(
            entries = caught_up.entries,
            "replaced maps removed; flow entries written during the switch carried over"
        );
    }

    let fill = Arc::new(RwLock::new(AppliedState::default()));
    let stats = stats::PinnedStats::new(
        ReadOnlyMaps::open(&args.pin_path).context("opening the maps for metrics")?,
        fill.clone(),
        capacity,
    );
    let health = SyncHealth::new(args.healthz_timeout);
    let metrics = Metrics::with_options(Arc::new(stats), health.clone(), args.metrics);
    let server = MetricsServer::bind(args.metrics_addr)
        .await
        .with_context(|| format!("serving metrics on {}", args.metrics_addr))?;
    tracing::info!(addr = %server.local_addr(), "metrics, /healthz and /readyz");
    tokio::spawn(server.run(metrics.clone()));
    if let Some(addr) = args.healthz_addr {
        let counted = metrics.clone();
        tokio::spawn(ProxyHealthServer::keep_trying(
            addr,
            BIND_RETRY,
            health.clone(),
            move |error| {
                tracing::warn!("{error}");
                counted.count_error(error.kind());
            },
        ));
    }
    let mut health_checks =
        ServiceHealthServers::new(node.nodeport_addresses.clone(), health.clone());

    let mut updates = source::spawn(args.source.clone(), node)
        .await
        .context("starting the source")?;
    tokio::spawn(mark_queued(updates.clone(), health.clone()));
    let mut sigterm = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut reported: BTreeSet<String> = BTreeSet::new();
    let mut synced_once = false;
    let mut trigger_times = TriggerTimes::new(SystemTime::now());
    let mut retry = SyncRetry::default();
    // Set while the last sync failed: then the latest snapshot is synced again at this time.
    let mut retry_at: Option<tokio::time::Instant> = None;
    loop {
        let retrying = tokio::select! {
            changed = updates.changed() => {
                if changed.is_err() {
                    anyhow::bail!("the source stopped; see the errors above");
                }
                false
            }
            _ = tokio::time::sleep_until(retry_at.unwrap_or_else(tokio::time::Instant::now)),
                if retry_at.is_some() => true,
            _ = sigterm.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        };
        let Some(update) = updates.borrow_and_update().clone() else {
            continue;
        };
        if retrying {
            tracing::info!("syncing again after the failed write");
        }
        // A retry syncs the same update: its problems were said and counted already.
        for problem in update.problems.iter().filter(|_| !retrying) {
            match problem {
                SourceProblem::ManifestWarning(warning) => warning.log(),
                other => tracing::warn!(kind = other.kind(), "{other}"),
            }
            metrics.count_error(problem.kind());
        }
        let node_eligibility = update.snapshot.node_eligibility;
        if health.set_node(node_eligibility) != node_eligibility {
            if node_eligibility.is_eligible() {
                tracing::info!("the node is eligible again: /healthz answers 200");
            } else {
                tracing::warn!("{node_eligibility}: /healthz answers 503 (nodeEligible: false)");
            }
        }
        let result = tokio::task::block_in_place(|| reconciler.sync(&update.snapshot));
        match result {
            Ok(report) => {
                retry.succeeded();
                retry_at = None;
                let synced_at = SystemTime::now();
                metrics.observe_sync(report.duration);
                metrics.observe_programming_latency(update.triggered_at.elapsed());
                for latency in trigger_times.synced(&update.snapshot.endpoint_slices, synced_at) {
                    metrics.observe_network_programming(latency);
                }
                metrics.count_changes(&report.changes);
                metrics.set_rejected(report.rejected.len());
                // Say each warning and rejection once, not on every resync.
                let mut now = BTreeSet::new();
                for warning in &report.warnings {
                    let line = warning.to_string();
                    if !reported.contains(&line) {
                        warning.log();
                    }
                    now.insert(line);
                }
                for (name, reason) in &report.rejected {
                    let line = format!("service {name} is not programmed: {reason}");
                    if !reported.contains(&line) {
                        tracing::warn!(
                            namespace = %name.namespace,
                            service = %name.name,
                            port = %name.port,
                            "not programmed: {reason}"
                        );
                    }
                    now.insert(line);
                }
                reported = now;
                let stale = report.stale_flows;
                if stale.conntrack + stale.affinity > 0 {
                    tracing::info!(
                        conntrack_entries = stale.conntrack,
                        affinity_entries = stale.affinity,
                        "deleted UDP flows to endpoints that stopped serving"
                    );
                }
                *fill.write().unwrap_or_else(|p| p.into_inner()) = reconciler.applied().clone();
                // A rejected manifest edit is not in the maps: it stays queued until a
                // valid one is (after --healthz-timeout the agent turns unhealthy).
                if update.cause != UpdateCause::Rejected {
                    health.updated(update.generation);
                    metrics.sync_succeeded(synced_at);
                }
                for error in health_checks.sync(&report.health_checks) {
                    match &error {
                        HealthError::HealthCheckPort { service, .. } => tracing::warn!(
                            namespace = %service.namespace,
                            service = %service.name,
                            "{error}"
                        ),
                        HealthError::Bind { .. } => tracing::warn!("{error}"),
                    }
                    metrics.count_error(error.kind());
                }
                if !synced_once {
                    synced_once = true;
                    tracing::info!(
                        ops = report.ops,
                        ms = report.duration.as_secs_f64() * 1000.0,
                        "first full sync done; ready"
                    );
                } else {
                    tracing::debug!(
                        ops = report.ops,
                        affinity_forgotten = report.affinity_forgotten,
                        cause = update.cause.as_str(),
                        "synced"
                    );
                }
            }
            Err(error) => {
                let wait = retry.failed();
                tracing::error!(
                    %error,
                    retry_in_secs = wait.as_secs(),
                    "writing the maps failed; tried again then, or at the next update"
                );
                metrics.count_error(error.kind());
                retry_at = Some(tokio::time::Instant::now() + wait);
            }
        }
    }
    tracing::info!(
        pin_path = %args.pin_path.display(),
        "stopping; programs and maps stay pinned and keep balancing"
    );
    Ok(())
}

/// Deletes expired masquerade entries every [`MASQUERADE_EXPIRY_INTERVAL`], for as long as
/// the agent runs (a stopped agent leaves them: they are freed by its successor).
async fn expire_masquerade(
    snat: aya::maps::MapData,
    config: lb_common::Config,
    tcp_time_wait: Duration,
) {
    use std::os::fd::AsFd as _;
    let mut tick = tokio::time::interval(MASQUERADE_EXPIRY_INTERVAL);
    loop {
        tick.tick().await;
        let result = tokio::task::block_in_place(|| {
            masquerade::expire(
                snat.fd().as_fd(),
                &config,
                u64::try_from(tcp_time_wait.as_nanos()).unwrap_or(u64::MAX),
                masquerade::monotonic_coarse_ns(),
            )
        });
        match result {
            Ok(expired) if expired.flows() > 0 => {
                tracing::debug!(flows = expired.flows(), "expired masqueraded flows");
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "deleting expired masquerade entries failed"),
        }
    }
}

/// Marks every update the source publishes as queued, from a task of its own: an update the
/// sync loop does not apply in time (a write that keeps failing, a loop that is stuck) makes
/// the agent unhealthy, as kube-proxy's event handlers do for its sync loop.
async fn mark_queued(mut updates: SourceReceiver, health: SyncHealth) {
    while updates.changed().await.is_ok() {
        let generation = updates.borrow_and_update().as_ref().map(|u| u.generation);
        if let Some(generation) = generation {
            health.queued(generation);
        }
    }
}

fn model_config(args: &AgentConfig) -> ModelConfig {
    ModelConfig {
        proxy_name: args.service_proxy_name.clone(),
    }
}

#[cfg(test)]
mod sync_retry_tests {
    use super::*;

    #[test]
    fn a_failed_sync_is_tried_again_after_1_s_doubling_to_30_s_and_from_1_s_again_after_a_success()
    {
        let mut retry = SyncRetry::default();
        let waits: Vec<u64> = (0..8).map(|_| retry.failed().as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30, 30]);
        retry.succeeded();
        assert_eq!(retry.failed(), Duration::from_secs(1));
    }
}
