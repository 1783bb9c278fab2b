//! The map writer: the only code that changes kernel maps. [`MapWriter`] is the seam; the
//! aya implementation writes pinned maps, [`memory::MemoryMaps`] stands in for tests.
//! Readers that must not write (the operator commands, the metrics) open the pins
//! read-only ([`aya_maps::ReadOnlyMaps`], [`loader::ReadOnlyDatapath`]).

pub mod applied;
pub mod attach_mode;
pub mod aya_maps;
pub mod batch;
pub mod cgroup;
pub mod clock;
pub mod frontend_filter;
pub mod loader;
pub mod mapped_array;
pub mod masquerade;
pub mod memory;
pub mod migrate;
pub mod pins;
mod selection_table;
mod stale_flows;
mod sys;
pub mod test_run;
mod undo;

pub use batch::{Counted, HASH_CHUNK, update_entries};

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use lb_common::{
    AffinityKey, AffinityValue, Backend, FrontendKey, FrontendValue, SourceRangeKey, TableMember,
};
pub use selection_table::SelectionTable;
pub use stale_flows::{DeletedFlows, FlowEndpoint, Serving, StaleFlows};

/// One change to the kernel's configuration maps. The diff emits these in an order that
/// never lets a packet see a half-written service (make-before-break).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapOp {
    PutBackend {
        id: u32,
        backend: Backend,
    },
    DeleteBackend {
        id: u32,
    },
    /// Write a whole Maglev table (backend ids, one per slot) starting at `offset` in
    /// SELECTION. Tables are written into free space, never over one in use. Shared with
    /// the planner's cache and the applied mirror, so a table is held in memory once.
    PutSelection {
        offset: u32,
        slots: SelectionTable,
    },
    /// Index the table at `offset` (which holds `slots`) in TABLE_MEMBERS: each backend it
    /// names, with its first slot. Written after the table, before a frontend points at it.
    PutTableMembers {
        offset: u32,
        slots: SelectionTable,
    },
    /// Remove the index of a table no frontend points at any more.
    DeleteTableMembers {
        offset: u32,
        slots: SelectionTable,
    },
    PutFrontend {
        key: FrontendKey,
        value: FrontendValue,
    },
    DeleteFrontend {
        key: FrontendKey,
    },
    PutServiceName {
        id: u32,
        name: String,
    },
    DeleteServiceName {
        id: u32,
    },
    PutSourceRange {
        key: SourceRangeKey,
        prefix_len: u32,
    },
    DeleteSourceRange {
        key: SourceRangeKey,
        prefix_len: u32,
    },
}

/// What the configuration maps hold now, as read back from the kernel (or the fake).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppliedState {
    pub frontends: BTreeMap<FrontendKey, FrontendValue>,
    /// Backend id -> backend (only non-empty slots).
    pub backends: BTreeMap<u32, Backend>,
    /// Table offset -> slots, for every table a frontend points at.
    pub selection: BTreeMap<u32, SelectionTable>,
    pub service_names: BTreeMap<u32, String>,
    pub source_ranges: BTreeSet<(SourceRangeKey, u32)>,
    /// Table offset -> backends indexed, for every table in `selection` whose
    /// TABLE_MEMBERS index is complete (a table left without one, e.g. by an older agent,
    /// is missing here).
    pub table_members: BTreeMap<u32, u32>,
    /// Counts [`AppliedState::apply`] keeps in step with `frontends` and `table_members`.
    pub(crate) tallies: applied::Tallies,
}

/// Each backend the backend ids `slots` name, with the first slot naming it, in id order:
/// the TABLE_MEMBERS entries of a table read as ids.
pub fn members_of(slots: &[u32]) -> Vec<(u32, u32)> {
    SelectionTable::from_ids(slots).first_slots()
}

/// Whether `table` (the table at `offset`) is completely indexed, asking `member` for the
/// slot an entry gives; an entry counts only when its slot names its backend.
pub fn fully_indexed(
    offset: u32,
    table: &SelectionTable,
    member: impl Fn(TableMember) -> Option<u32>,
) -> bool {
    table.members().iter().all(|&backend_id| {
        member(TableMember {
            table_offset: offset,
            backend_id,
        })
        .is_some_and(|slot| table.get(slot as usize) == Some(backend_id))
    })
}

/// Sizes of every sized kernel map (the statistics arrays have fixed sizes). The loader
/// creates the maps with them; the diff refuses what would not fit the configuration maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapCapacity {
    pub frontends: u32,
    pub backends: u32,
    pub selection_slots: u32,
    /// Entries of TABLE_MEMBERS: (selection table, backend) pairs.
    pub table_members: u32,
    pub conntrack: u32,
    /// Entries of HANDSHAKES (TCP flows between the client's SYN and its next packet).
    pub handshakes: u32,
    pub affinity: u32,
    pub fragments: u32,
    /// Entries of SOCK_CONNECTED and of SOCK_REVERSE each (socket-level balancing).
    pub socket_flows: u32,
    /// Entries of SNAT (masquerade; two per masqueraded flow).
    pub snat: u32,
    pub source_ranges: u32,
    /// Service ids index SERVICE_STATS and SERVICE_NAMES.
    pub services: u32,
}

impl Default for MapCapacity {
    fn default() -> Self {
        use lb_common::capacity;
        Self {
            frontends: capacity::FRONTENDS,
            backends: capacity::BACKENDS,
            selection_slots: capacity::SELECTION_SLOTS,
            table_members: capacity::TABLE_MEMBERS,
            conntrack: capacity::CONNTRACK,
            handshakes: capacity::HANDSHAKES,
            affinity: capacity::AFFINITY,
            fragments: capacity::FRAGMENTS,
            socket_flows: capacity::SOCK_CONNECTED,
            snat: capacity::SNAT,
            source_ranges: capacity::SOURCE_RANGES,
            services: capacity::SERVICES,
        }
    }
}

/// Why a map read or write failed; [`DataplaneError::kind`], the variant's name, is its
/// metric label.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("writing {map} failed: {source}")]
    MapWrite {
        map: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("reading {map} failed: {source}")]
    MapRead {
        map: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{map} is full ({capacity} entries)")]
    MapFull { map: &'static str, capacity: u32 },
    /// A batched write the kernel stopped at `entry` (the entries before it went in).
    #[error("{}", refusal(map, entry, *capacity, source))]
    EntryRefused {
        map: &'static str,
        /// The first entry not written, described as the agent shows it.
        entry: String,
        capacity: u32,
        #[source]
        source: std::io::Error,
    },
}

/// Whether the kernel refused a batched entry because the map is full: a hash map says
/// E2BIG (an array, for an index past its end). ENOMEM is not that: the kernel could not
/// allocate the entry (memory pressure), however much room the map has.
fn means_full(error: &std::io::Error) -> bool {
    error.raw_os_error() == Some(libc::E2BIG)
}

fn refusal(map: &str, entry: &str, capacity: u32, source: &std::io::Error) -> String {
    if means_full(source) {
        format!("{map} is full ({capacity} entries): {entry} was not written ({source})")
    } else {
        format!("writing {map} failed at {entry}: {source}")
    }
}

impl DataplaneError {
    /// The error for a batched write of `map` that the kernel stopped at entry
    /// `failed.written`, which `describe` names from its index in the batch.
    pub fn refused(
        map: &'static str,
        capacity: u32,
        failed: batch::PartialWrite,
        describe: impl FnOnce(usize) -> Option<String>,
    ) -> Self {
        let written = failed.written;
        Self::EntryRefused {
            map,
            entry: describe(written)
                .unwrap_or_else(|| format!("the entry after the first {written}")),
            capacity,
            source: failed.source,
        }
    }

    /// Every value of [`Self::kind`]: the metrics count each from zero.
    pub const KINDS: [&'static str; 3] = ["map_write", "map_read", "map_full"];

    /// The variant's name in snake_case, for the `kind` label of `slicelb_errors_total`; a
    /// refused batch entry counts as the map being full or as a failed write, by its errno.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::MapWrite { .. } => "map_write",
            Self::MapRead { .. } => "map_read",
            Self::MapFull { .. } => "map_full",
            Self::EntryRefused { source, .. } if means_full(source) => "map_full",
            Self::EntryRefused { .. } => "map_write",
        }
    }
}

/// A frontend key as the agent shows it (`slicelb check`, errors): `198.18.100.1:80/TCP`.
pub fn describe_frontend(key: &FrontendKey) -> String {
    let proto = match key.proto {
        lb_common::PROTO_TCP => "TCP".to_owned(),
        lb_common::PROTO_UDP => "UDP".to_owned(),
        lb_common::PROTO_SCTP => "SCTP".to_owned(),
        other => format!("proto {other}"),
    };
    match decode_addr(&key.addr, key.family) {
        Some(ip) => format!("{}/{proto}", SocketAddr::new(ip, u16::from_be(key.port))),
        None => format!("<family {}>/{proto}", key.family),
    }
}

/// An address as the maps store it (16 bytes and a family); `None` for an unknown family.
pub fn decode_addr(bytes: &[u8; 16], family: u8) -> Option<IpAddr> {
    match family {
        lb_common::FAMILY_IPV4 => Some(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        lb_common::FAMILY_IPV6 => Some(IpAddr::V6(Ipv6Addr::from(*bytes))),
        _ => None,
    }
}

/// Reads and writes the configuration maps, and forgets the flow state that names what
/// they no longer hold.
pub trait MapWriter {
    fn capacity(&self) -> MapCapacity;
    fn read(&self) -> Result<AppliedState, DataplaneError>;
    /// Applies `ops` in order; on error, the ops before the failing one stay applied, except
    /// TABLE_MEMBERS entries of tables no frontend points at that these ops wrote (part of
    /// the failing op's too) or meant to delete: those are taken out, since [`Self::read`]
    /// would not see them.
    fn apply(&mut self, ops: &[MapOp]) -> Result<(), DataplaneError>;
    /// Deletes the flow state `stale` names (CONNTRACK entries both ways, AFFINITY entries),
    /// looking at each entry of those maps at most once.
    fn delete_stale_flows(&mut self, stale: &StaleFlows) -> Result<DeletedFlows, DataplaneError>;

    /// Deletes the AFFINITY entries `stale` picks (one walk of the map, batched); returns
    /// how many it deleted.
    fn forget_affinity(
        &mut self,
        stale: &dyn Fn(&AffinityKey, &AffinityValue) -> bool,
    ) -> Result<usize, DataplaneError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_kind_is_listed_for_the_metrics() {
        let io = || std::io::Error::from_raw_os_error(libc::EPERM);
        let map = lb_common::map_names::FRONTENDS;
        let errors = [
            DataplaneError::MapWrite { map, source: io() },
            DataplaneError::MapRead { map, source: io() },
            DataplaneError::MapFull { map, capacity: 1 },
        ];
        let kinds: Vec<&str> = errors.iter().map(DataplaneError::kind).collect();
        assert_eq!(kinds, DataplaneError::KINDS);
    }

    #[test]
    fn a_refused_batch_entry_names_the_map_the_entry_and_the_reason() {
        let refused = |errno| DataplaneError::EntryRefused {
            map: lb_common::map_names::TABLE_MEMBERS,
            entry: "backend 7 (first slot 3) of the selection table at 512".to_owned(),
            capacity: 64,
            source: std::io::Error::from_raw_os_error(errno),
        };
        let full = refused(libc::E2BIG);
        assert_eq!(full.kind(), "map_full", "E2BIG: the map is full");
        let message = full.to_string();
        for part in [
            "TABLE_MEMBERS is full (64 entries)",
            "backend 7 (first slot 3) of the selection table at 512 was not written",
            "Argument list too long",
        ] {
            assert!(message.contains(part), "{part:?} missing from {message:?}");
        }
        let no_memory = refused(libc::ENOMEM);
        assert_eq!(
            no_memory.kind(),
            "map_write",
            "ENOMEM: no memory for the entry, not a full map"
        );
        assert!(!no_memory.to_string().contains("is full"), "{no_memory}");
        let invalid = refused(libc::EINVAL);
        assert_eq!(invalid.kind(), "map_write", "EINVAL: a failed write");
        assert!(
            invalid.to_string().starts_with(
                "writing TABLE_MEMBERS failed at backend 7 (first slot 3) of the selection table at 512: Invalid argument"
            ),
            "{invalid}"
        );
    }

    #[test]
    fn a_tables_members_are_its_distinct_backends_with_their_first_slot_in_id_order() {
        assert_eq!(
            members_of(&[9, 4, 9, 4, 7, 4, 9]),
            vec![(4, 1), (7, 4), (9, 0)]
        );
        assert_eq!(members_of(&[]), Vec::new());
    }
}
