//! The maps pinned under a pin path, opened read-only: the kernel refuses every write made
//! through these descriptors, so a reader cannot change what a running agent keeps.

use std::path::Path;

use aya::maps::MapData;
use lb_common::map_names;

use super::{DataplaneError, MapCapacity, sys};

/// Map `map` pinned under `pin_path/maps`, through a read-only descriptor.
pub fn open_read_only(pin_path: &Path, map: &'static str) -> Result<MapData, DataplaneError> {
    let read_error = |source| DataplaneError::MapRead { map, source };
    let fd = sys::open_pinned_read_only(&pin_path.join("maps").join(map)).map_err(read_error)?;
    MapData::from_fd(fd).map_err(|error| read_error(std::io::Error::other(error)))
}

/// The sizes the maps pinned under `pin_path` were made with (an agent may size them other
/// than the defaults).
pub fn pinned_capacity(pin_path: &Path) -> Result<MapCapacity, DataplaneError> {
    let size = |map: &'static str| -> Result<u32, DataplaneError> {
        let info =
            open_read_only(pin_path, map)?
                .info()
                .map_err(|error| DataplaneError::MapRead {
                    map,
                    source: std::io::Error::other(error),
                })?;
        Ok(info.max_entries())
    };
    Ok(MapCapacity {
        frontends: size(map_names::FRONTENDS)?,
        backends: size(map_names::BACKENDS)?,
        selection_slots: size(map_names::SELECTION)?,
        table_members: size(map_names::TABLE_MEMBERS)?,
        conntrack: size(map_names::CONNTRACK)?,
        // Pinned by agents since the handshake table came; older pins have none yet.
        handshakes: size(map_names::HANDSHAKES).unwrap_or(lb_common::capacity::HANDSHAKES),
        affinity: size(map_names::AFFINITY)?,
        fragments: size(map_names::FRAGMENTS)?,
        socket_flows: size(map_names::SOCK_CONNECTED)?,
        // Pinned by agents since masquerade came; older pins have none yet.
        snat: size(map_names::SNAT).unwrap_or(lb_common::capacity::SNAT),
        source_ranges: size(map_names::SOURCE_RANGES)?,
        services: size(map_names::SERVICE_NAMES)?,
    })
}
