//! `slicelb status`: what is attached where (from the pinned links), how full each pinned
//! map is, and which processes hold the maps open (the agent leaves no other mark: no pid
//! file, no record of its last sync outside its metrics endpoint). Strictly read-only: maps
//! through read-only descriptors, links only asked for their ids.

use std::{
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use aya::{
    maps::{MapData, MapType},
    programs::links::{FdLink, PinnedLink},
};
use lb_common::{
    AffinityKey, AffinityValue, FlowKey, FlowValue, FragmentKey, FragmentValue, FrontendKey,
    FrontendValue, SockConnection, SockReverseKey, SockReverseValue, TableMember, map_names,
};
use serde::Serialize;

use super::{
    StatusArgs,
    commands::open_pinned,
    output::{Column, OutputArgs, joined, table},
};
use crate::dataplane::{
    AppliedState, MapWriter as _, batch,
    loader::{ALL_MAPS, cgroup_link_dirs},
    pins,
};

/// The hooks of an interface, by their pin's name under `links/<iface>/`.
const INTERFACE_HOOKS: [&str; 3] = ["xdp", "tc_ingress", "tc_egress"];

/// A pinned link: the kernel's ids for it and its program.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LinkStatus {
    /// The pin's name: `xdp`, `tc_ingress`, `tc_egress`, or a socket program's name.
    pub hook: String,
    pub link_id: u32,
    pub program_id: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InterfaceStatus {
    /// As named under `links/` (bpffs names cannot hold dots: `eth0.100` is `eth0_100`).
    pub interface: String,
    /// How packets arriving on it are balanced: `xdp` or `tc`; `none` without a link.
    pub ingress_mode: &'static str,
    pub links: Vec<LinkStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CgroupLinks {
    /// The pin directory of one socket-level attach (`links/cgroup-<stamp>`).
    pub directory: String,
    pub links: Vec<LinkStatus>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MapStatus {
    pub map: &'static str,
    /// The kernel's map type (`Hash`, `LruHash`, `Array`…); `missing` when not pinned.
    pub kind: String,
    /// Entries in use (slots for SELECTION); absent for maps of fixed content (counters,
    /// configuration, the frontend bitmap).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entries: Option<u64>,
    pub max_entries: u32,
}

impl MapStatus {
    pub fn fill_percent(&self) -> Option<f64> {
        let entries = self.entries?;
        (self.max_entries > 0).then(|| entries as f64 * 100.0 / f64::from(self.max_entries))
    }
}

/// A process that holds the pinned maps open.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MapHolder {
    pub pid: u32,
    pub command: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AgentStatus {
    /// A process whose command line has the `agent` subcommand holds FRONTENDS open.
    pub running: bool,
    /// Every other process holding FRONTENDS open (the agent, or an operator command).
    pub holders: Vec<MapHolder>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Status {
    pub pin_path: PathBuf,
    /// The layout version pinned with the maps (`lb_common::LAYOUT_VERSION`); 0 for maps
    /// pinned before versions were.
    pub layout_version: u32,
    pub interfaces: Vec<InterfaceStatus>,
    pub cgroup_links: Vec<CgroupLinks>,
    pub maps: Vec<MapStatus>,
    pub agent: AgentStatus,
}

/// The ids of the link pinned at `path`; `None` when nothing is pinned there.
fn link_status(path: &Path, hook: String) -> anyhow::Result<Option<LinkStatus>> {
    if !path.exists() {
        return Ok(None);
    }
    let link = FdLink::from(
        PinnedLink::from_pin(path)
            .with_context(|| format!("opening the link {}", path.display()))?,
    );
    let info = link
        .info()
        .with_context(|| format!("reading the link {}", path.display()))?;
    Ok(Some(LinkStatus {
        hook,
        link_id: info.id(),
        program_id: info.program_id(),
    }))
}

/// The entries of `dir` by name (a missing directory has none).
fn sorted_entries(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut paths = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|entry| entry.map(|e| e.path()))
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("listing {}", dir.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    paths.sort();
    Ok(paths)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The interfaces with links pinned under `pin_path` (by name) and how each is balanced.
pub(super) fn interfaces(pin_path: &Path) -> anyhow::Result<Vec<InterfaceStatus>> {
    let cgroup_dirs = cgroup_link_dirs(pin_path)?;
    let mut out = Vec::new();
    for dir in sorted_entries(&pin_path.join("links"))? {
        if cgroup_dirs.contains(&dir) || !dir.is_dir() {
            continue;
        }
        let mut links = Vec::new();
        for hook in INTERFACE_HOOKS {
            links.extend(link_status(&dir.join(hook), hook.to_string())?);
        }
        let has = |hook: &str| links.iter().any(|l| l.hook == hook);
        let ingress_mode = if has("xdp") {
            "xdp"
        } else if has("tc_ingress") {
            "tc"
        } else {
            "none"
        };
        out.push(InterfaceStatus {
            interface: file_name(&dir),
            ingress_mode,
            links,
        });
    }
    Ok(out)
}

fn cgroup_links(pin_path: &Path) -> anyhow::Result<Vec<CgroupLinks>> {
    let mut dirs = cgroup_link_dirs(pin_path)?;
    dirs.sort();
    dirs.iter()
        .map(|dir| {
            let mut links = Vec::new();
            for pin in sorted_entries(dir)? {
                links.extend(link_status(&pin, file_name(&pin))?);
            }
            Ok(CgroupLinks {
                directory: file_name(dir),
                links,
            })
        })
        .collect()
}

/// Entries of the hash map `data`, whose keys and values are `K` and `V`, counted in one
/// bounded pass.
fn hash_entries<K, V>(data: &MapData, max_entries: u32) -> std::io::Result<u64>
where
    K: aya::Pod + Default + Clone,
    V: aya::Pod + Default + Clone,
{
    batch::count_entries::<K, V>(data.fd().as_fd(), max_entries).map(|c| c.entries.into())
}

/// Entries in use in `map`: hash maps counted, arrays, the LPM trie and SERVICE_NAMES (whose
/// values are too large for a batch buffer's `Default`) from what the configuration read
/// (`applied`) holds; `None` for maps of fixed content.
fn entries_in_use(
    map: &'static str,
    data: &MapData,
    max_entries: u32,
    applied: &AppliedState,
) -> anyhow::Result<Option<u64>> {
    let counted = match map {
        map_names::FRONTENDS => hash_entries::<FrontendKey, FrontendValue>(data, max_entries),
        map_names::TABLE_MEMBERS => hash_entries::<TableMember, u32>(data, max_entries),
        map_names::CONNTRACK => hash_entries::<FlowKey, FlowValue>(data, max_entries),
        map_names::AFFINITY => hash_entries::<AffinityKey, AffinityValue>(data, max_entries),
        map_names::FRAGMENTS => hash_entries::<FragmentKey, FragmentValue>(data, max_entries),
        map_names::SOCK_REVERSE => {
            hash_entries::<SockReverseKey, SockReverseValue>(data, max_entries)
        }
        map_names::SOCK_CONNECTED => hash_entries::<u64, SockConnection>(data, max_entries),
        map_names::SERVICE_NAMES => return Ok(Some(applied.service_names.len() as u64)),
        map_names::BACKENDS => return Ok(Some(applied.backends.len() as u64)),
        map_names::SELECTION => return Ok(Some(applied.selection_slots_used())),
        map_names::SOURCE_RANGES => return Ok(Some(applied.source_ranges.len() as u64)),
        _ => return Ok(None),
    };
    counted
        .map(Some)
        .with_context(|| format!("counting the entries of {map}"))
}

fn maps(pin_path: &Path, applied: &AppliedState) -> anyhow::Result<Vec<MapStatus>> {
    ALL_MAPS
        .iter()
        .map(|&(map, _)| {
            let Ok(data) = pins::open_read_only(pin_path, map) else {
                return Ok(MapStatus {
                    map,
                    kind: "missing".to_string(),
                    entries: None,
                    max_entries: 0,
                });
            };
            let info = data
                .info()
                .with_context(|| format!("reading what {map} is"))?;
            let max_entries = info.max_entries();
            Ok(MapStatus {
                map,
                kind: info
                    .map_type()
                    .map_or_else(|_| "unknown".to_string(), |t: MapType| format!("{t:?}")),
                entries: entries_in_use(map, &data, max_entries, applied)?,
                max_entries,
            })
        })
        .collect()
}

/// The id of the map pinned as FRONTENDS: the processes holding it are the agent and
/// operator commands.
fn frontends_map_id(pin_path: &Path) -> anyhow::Result<u32> {
    Ok(pins::open_read_only(pin_path, map_names::FRONTENDS)?
        .info()
        .context("reading FRONTENDS")?
        .id())
}

/// Whether `/proc/<pid>/fdinfo/<fd>` describes the map `map_id`.
fn fd_is_map(pid_dir: &Path, fd: &std::ffi::OsStr, map_id: u32) -> bool {
    std::fs::read_to_string(pid_dir.join("fdinfo").join(fd)).is_ok_and(|info| {
        info.lines()
            .any(|line| line.strip_prefix("map_id:").map(str::trim) == Some(&map_id.to_string()))
    })
}

/// Processes other than this one with the map `map_id` open, from /proc (processes this
/// user may not look into are skipped).
fn map_holders(map_id: u32) -> Vec<(MapHolder, bool)> {
    let own = std::process::id();
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut holders = Vec::new();
    for process in processes.flatten() {
        let Some(pid) = process
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == own {
            continue;
        }
        let dir = process.path();
        let Ok(fds) = std::fs::read_dir(dir.join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|target| target.as_os_str() == "anon_inode:bpf-map")
                && fd_is_map(&dir, &fd.file_name(), map_id)
        });
        if !holds {
            continue;
        }
        let argv: Vec<String> = std::fs::read(dir.join("cmdline"))
            .unwrap_or_default()
            .split(|b| *b == 0)
            .filter(|arg| !arg.is_empty())
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect();
        let is_agent = argv.iter().skip(1).any(|arg| arg == "agent");
        holders.push((
            MapHolder {
                pid,
                command: argv.join(" "),
            },
            is_agent,
        ));
    }
    holders.sort_by_key(|(holder, _)| holder.pid);
    holders
}

/// Everything `slicelb status` shows about the datapath pinned under `pin_path`.
pub fn read(pin_path: &Path) -> anyhow::Result<Status> {
    let applied = open_pinned(pin_path)?.read().context("reading the maps")?;
    let holders = map_holders(frontends_map_id(pin_path)?);
    let layout_version = crate::dataplane::migrate::pinned_version(&pin_path.join("maps"))
        .context("reading the pinned layout version")?
        .unwrap_or(0);
    Ok(Status {
        pin_path: pin_path.to_path_buf(),
        layout_version,
        interfaces: interfaces(pin_path)?,
        cgroup_links: cgroup_links(pin_path)?,
        maps: maps(pin_path, &applied)?,
        agent: AgentStatus {
            running: holders.iter().any(|(_, is_agent)| *is_agent),
            holders: holders.into_iter().map(|(holder, _)| holder).collect(),
        },
    })
}

/// A fill in percent; a map in use but under 0.1 % full does not read as empty.
fn fill_cell(percent: f64) -> String {
    if percent > 0.0 && percent < 0.1 {
        "<0.1%".to_string()
    } else {
        format!("{percent:.1}%")
    }
}

fn ids(links: &[LinkStatus]) -> String {
    let cells: Vec<String> = links
        .iter()
        .map(|l| format!("{}={}/{}", l.hook, l.link_id, l.program_id))
        .collect();
    joined(&cells, "-")
}

impl Status {
    /// Sections a blank line apart: the pin path and agent, interfaces, socket-level
    /// links, maps. Link cells read `hook=LINK_ID/PROGRAM_ID`.
    pub fn render_table(&self, wide: bool, headers: bool) -> String {
        let agent = if self.agent.running {
            "running"
        } else if self.agent.holders.is_empty() {
            "not running (no process holds the maps)"
        } else {
            "not running (other processes hold the maps)"
        };
        let mut summary = vec![
            vec!["pin path".to_string(), self.pin_path.display().to_string()],
            vec![
                "layout version".to_string(),
                self.layout_version.to_string(),
            ],
            vec!["agent".to_string(), agent.to_string()],
        ];
        if wide || !self.agent.running {
            summary.extend(self.agent.holders.iter().map(|h| {
                vec![
                    "map holder".to_string(),
                    format!("pid {} {}", h.pid, h.command),
                ]
            }));
        }
        // Sections with no rows (no interface attached, no socket-level links) are left out.
        let section = |rows: usize, text: String| if rows == 0 { String::new() } else { text };
        let interfaces = table(
            &[
                Column::text("INTERFACE"),
                Column::text("INGRESS"),
                Column::text("LINKS (hook=link/program)"),
            ],
            self.interfaces.iter().map(|i| {
                vec![
                    i.interface.clone(),
                    i.ingress_mode.to_string(),
                    ids(&i.links),
                ]
            }),
            headers,
        );
        let cgroups = table(
            &[
                Column::text("SOCKET-LEVEL LINKS"),
                Column::number("PROGRAMS"),
                Column::text("LINKS (hook=link/program)"),
            ],
            self.cgroup_links.iter().map(|c| {
                vec![
                    c.directory.clone(),
                    c.links.len().to_string(),
                    if wide {
                        ids(&c.links)
                    } else {
                        "(-o wide)".to_string()
                    },
                ]
            }),
            headers,
        );
        let maps = table(
            &[
                Column::text("MAP"),
                Column::text("TYPE"),
                Column::number("ENTRIES"),
                Column::number("MAX"),
                Column::number("FILL"),
            ],
            self.maps.iter().map(|m| {
                vec![
                    m.map.to_string(),
                    m.kind.clone(),
                    m.entries.map_or("-".to_string(), |e| e.to_string()),
                    m.max_entries.to_string(),
                    m.fill_percent().map_or("-".to_string(), fill_cell),
                ]
            }),
            headers,
        );
        [
            table(&[Column::text(""), Column::text("")], summary, false),
            section(self.interfaces.len(), interfaces),
            section(self.cgroup_links.len(), cgroups),
            maps,
        ]
        .into_iter()
        .filter(|section| !section.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
    }
}

pub fn run(args: &StatusArgs) -> anyhow::Result<()> {
    let status = read(&args.pin_path)?;
    let output: &OutputArgs = &args.output;
    print!(
        "{}",
        output
            .serialized(&status)
            .unwrap_or_else(|| status.render_table(output.wide(), !output.no_headers))
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::output::OutputFormat;

    fn sample() -> Status {
        let link = |hook: &str, link_id, program_id| LinkStatus {
            hook: hook.to_string(),
            link_id,
            program_id,
        };
        Status {
            pin_path: PathBuf::from("/sys/fs/bpf/slicelb"),
            layout_version: 1,
            interfaces: vec![
                InterfaceStatus {
                    interface: "eth0".into(),
                    ingress_mode: "xdp",
                    links: vec![link("xdp", 11, 101), link("tc_egress", 12, 102)],
                },
                InterfaceStatus {
                    interface: "a-very-long-interface-name_100".into(),
                    ingress_mode: "tc",
                    links: vec![link("tc_ingress", 13, 103), link("tc_egress", 14, 102)],
                },
            ],
            cgroup_links: vec![CgroupLinks {
                directory: "cgroup-1765000000".into(),
                links: vec![link("connect4", 20, 120), link("connect6", 21, 121)],
            }],
            maps: vec![
                MapStatus {
                    map: map_names::CONNTRACK,
                    kind: "LruHash".into(),
                    entries: Some(131_072),
                    max_entries: 524_288,
                },
                MapStatus {
                    map: map_names::REASON_STATS,
                    kind: "PerCpuArray".into(),
                    entries: None,
                    max_entries: 40,
                },
            ],
            agent: AgentStatus {
                running: true,
                holders: vec![MapHolder {
                    pid: 42,
                    command: "slicelb agent --iface eth0".into(),
                }],
            },
        }
    }

    #[test]
    fn the_table_shows_modes_ids_and_fill() {
        let text = sample().render_table(false, true);
        assert!(text.contains("agent            running"), "{text}");
        assert!(text.contains("layout version   1"), "{text}");
        let eth0 = text.lines().find(|l| l.starts_with("eth0 ")).expect("eth0");
        assert!(
            eth0.contains(" xdp ") && eth0.contains("xdp=11/101,tc_egress=12/102"),
            "{eth0}"
        );
        let long = text
            .lines()
            .find(|l| l.starts_with("a-very-long"))
            .expect("the long name");
        assert_eq!(
            long.find(" tc ").map(|i| i + 1),
            eth0.find(" xdp ").map(|i| i + 1),
            "the mode column lines up:\n{text}"
        );
        let conntrack = text
            .lines()
            .find(|l| l.starts_with("CONNTRACK"))
            .expect("CONNTRACK");
        assert!(
            conntrack.contains("131072") && conntrack.ends_with("25.0%"),
            "{conntrack}"
        );
        let counters = text
            .lines()
            .find(|l| l.starts_with("REASON_STATS"))
            .expect("row");
        assert!(counters.ends_with(" -"), "no fill for counters: {counters}");
        assert!(
            !text.contains("pid 42"),
            "holders only in wide when the agent runs"
        );
        let wide = sample().render_table(true, true);
        assert!(wide.contains("pid 42 slicelb agent --iface eth0"), "{wide}");
        assert!(wide.contains("connect4=20/120,connect6=21/121"), "{wide}");
        let mut detached = sample();
        detached.interfaces.clear();
        detached.cgroup_links.clear();
        let detached = detached.render_table(false, true);
        assert!(
            !detached.contains("INTERFACE") && !detached.contains("SOCKET-LEVEL"),
            "{detached}"
        );
        assert_eq!(fill_cell(0.002), "<0.1%");
        assert_eq!(fill_cell(0.0), "0.0%");
        let bare = sample().render_table(false, false);
        assert!(
            !bare.contains("INTERFACE") && !bare.contains("ENTRIES"),
            "{bare}"
        );
        assert!(bare.contains("CONNTRACK"), "{bare}");
    }

    #[test]
    fn json_and_yaml_carry_every_field_and_leave_out_unknown_fill() {
        let status = sample();
        let json: serde_json::Value = serde_json::from_str(
            &OutputArgs {
                output: OutputFormat::Json,
                no_headers: false,
            }
            .serialized(&status)
            .expect("json"),
        )
        .expect("valid JSON");
        assert_eq!(json["interfaces"][0]["ingress_mode"], "xdp");
        assert_eq!(json["interfaces"][0]["links"][0]["program_id"], 101);
        assert_eq!(json["cgroup_links"][0]["links"][1]["hook"], "connect6");
        assert_eq!(json["maps"][0]["entries"], 131_072);
        assert!(json["maps"][1].get("entries").is_none(), "{json}");
        assert_eq!(json["agent"]["running"], true);
        let yaml: serde_json::Value = serde_norway::from_str(
            &OutputArgs {
                output: OutputFormat::Yaml,
                no_headers: false,
            }
            .serialized(&status)
            .expect("yaml"),
        )
        .expect("valid YAML");
        assert_eq!(yaml, json);
    }
}
