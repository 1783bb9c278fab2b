//! The operator commands' glue: open the pinned maps (read-only), read, print.

use std::{collections::BTreeMap, path::Path, time::Duration};

use anyhow::Context as _;

use super::{AttachArgs, PinArgs, ServicesArgs, StatsArgs, services, stats::Stats};
use crate::dataplane::{
    MapWriter as _,
    aya_maps::ReadOnlyMaps,
    loader::{Datapath, DatapathOptions},
    pins,
};

/// The maps pinned under `pin_path`, read-only, with a hint when there are none.
pub fn open_pinned(pin_path: &Path) -> anyhow::Result<ReadOnlyMaps> {
    ReadOnlyMaps::open(pin_path).with_context(|| {
        format!(
            "no slicelb maps pinned under {} (is an agent running, or was --pin-path different?)",
            pin_path.display()
        )
    })
}

pub fn services(args: &ServicesArgs) -> anyhow::Result<()> {
    let maps = open_pinned(&args.pin_path)?;
    let applied = maps.read().context("reading the maps")?;
    let counters: BTreeMap<u32, lb_common::ServiceCounters> = maps
        .all_service_counters()
        .context("reading SERVICE_STATS")?
        .into_iter()
        .map(|(id, _, c)| (id, c))
        .collect();
    let rows = args.filter().apply(services::rows(&applied, &counters))?;
    print!(
        "{}",
        args.output.serialized(&rows).unwrap_or_else(|| {
            services::render_table(&rows, args.output.wide(), !args.output.no_headers)
        })
    );
    Ok(())
}

fn read_stats(maps: &ReadOnlyMaps) -> anyhow::Result<Stats> {
    let reasons: Vec<u64> = maps
        .reasons()
        .context("reading REASON_STATS")?
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    let protocols: Vec<u64> = maps
        .protocols()
        .context("reading PROTO_STATS")?
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    let sockets: Vec<u64> = maps
        .socket_counters()
        .context("reading SOCKET_STATS")?
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    let fast_path: Vec<u64> = maps
        .fast_path_counters()
        .context("reading FAST_PATH_STATS")?
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    Ok(Stats::new(&reasons, &protocols, &sockets, &fast_path))
}

pub fn stats(args: &StatsArgs) -> anyhow::Result<()> {
    let stats = read_stats(&open_pinned(&args.pin_path)?)?;
    print!(
        "{}",
        args.output
            .serialized(&stats.by_name())
            .unwrap_or_else(|| stats.render_table(!args.output.no_headers))
    );
    Ok(())
}

pub fn detach(args: &PinArgs) -> anyhow::Result<()> {
    Datapath::detach(&args.pin_path)
        .with_context(|| format!("removing what is pinned under {}", args.pin_path.display()))?;
    println!(
        "detached: programs, links and maps under {} removed",
        args.pin_path.display()
    );
    Ok(())
}

/// Loads and attaches the programs with empty maps (nothing is balanced; the counters show
/// what passes), then prints the per-protocol counters until Ctrl-C or `--duration`.
/// Over maps already pinned (an agent's), it writes only the links: the programs in them
/// are swapped for this binary's, the maps are adopted as they are.
pub fn attach(args: &AttachArgs) -> anyhow::Result<()> {
    // Over an agent's maps, their sizes: `attach` resizes nothing.
    let options = DatapathOptions {
        capacity: crate::dataplane::pins::pinned_capacity(&args.pin_path).unwrap_or_default(),
        ..DatapathOptions::default()
    };
    let mut datapath = Datapath::open(&args.pin_path, &options).with_context(|| {
        format!(
            "loading the programs pinned under {}",
            args.pin_path.display()
        )
    })?;
    for iface in &args.ifaces {
        let mode = crate::dataplane::attach_mode::XdpMode::from(args.xdp_mode).ingress_mode(iface);
        datapath
            .attach(iface, mode)
            .with_context(|| format!("attaching to {iface}"))?;
        println!(
            "attached to {iface} ({mode:?} ingress, TC egress); pinned under {}",
            args.pin_path.display()
        );
    }
    datapath
        .retire_replaced_maps()
        .context("removing the maps replaced by a migration")?;
    let maps = open_pinned(&args.pin_path)?;
    let started = std::time::Instant::now();
    let deadline = args.duration.map(Duration::from_secs);
    loop {
        std::thread::sleep(Duration::from_secs(args.interval.max(1)));
        let stats = read_stats(&maps)?;
        let line: Vec<String> = stats
            .protocols
            .iter()
            .map(|(name, n)| format!("{name}={n}"))
            .collect();
        println!("{}", line.join(" "));
        if deadline.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
    }
    println!(
        "programs stay attached; `slicelb detach --pin-path {}` removes them",
        args.pin_path.display()
    );
    Ok(())
}

/// Drift between what the source says and what the kernel holds.
#[derive(Debug, thiserror::Error)]
#[error("{count} difference(s) between the source and the kernel's maps under {pin_path}")]
pub struct Drift {
    pub count: usize,
    pub pin_path: String,
}

/// `slicelb check`: the operations that would take the pinned maps to the model's desired
/// state for the source's snapshot, planned within the maps' sizes and described for a
/// person. Prints every difference; an error (exit 1) when there is any.
pub fn check(args: &super::CheckArgs) -> anyhow::Result<()> {
    use crate::{
        model::{self, ModelConfig, NodeInfo},
        source,
    };
    let node = NodeInfo {
        name: args.node_name.clone(),
        zone: None,
        nodeport_addresses: crate::source::node::nodeport_addresses(&args.nodeport_addresses)
            .context("listing this node's addresses for NodePorts")?,
    };
    let config = args.source_config();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let snapshot = runtime
        .block_on(source::snapshot_once(config, node))
        .context("reading the source")?;
    let built = model::build(
        &snapshot,
        &ModelConfig {
            proxy_name: args.service_proxy_name.clone(),
        },
    );
    for warning in &built.warnings {
        eprintln!("skipped: {warning}");
    }
    let applied = open_pinned(&args.pin_path)?
        .read()
        .context("reading the maps")?;
    let capacity = pins::pinned_capacity(&args.pin_path).context("reading the maps' sizes")?;
    let differences = crate::diff::differences(&applied, &built.state, capacity);
    if differences.is_empty() {
        println!(
            "in sync: {} service ports, {} frontends",
            built.state.services.len(),
            applied.frontends.len()
        );
        return Ok(());
    }
    for difference in &differences {
        println!("{difference}");
    }
    Err(Drift {
        count: differences.len(),
        pin_path: args.pin_path.display().to_string(),
    }
    .into())
}
