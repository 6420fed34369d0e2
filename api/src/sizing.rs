//! How much `fs.aio-max-nr` a node needs: [`Sizing`] and the pure arithmetic behind it.
//! Every storage worker thread calls `io_setup(max_events)`, and the kernel charges
//! `max_events` against `fs.aio-max-nr` for each, so a node needs
//! `processes × workers × max_events` plus what others already hold (`fs.aio-nr`) plus
//! headroom, never below the cluster's floor (`spec.sysctl.aioMaxNr`).

use crate::cluster::{AioSpec, SysctlSpec};

/// Extra libaio events on top of what the storage processes and everything else
/// already hold, so a restart of one process (old context not yet freed) still fits.
pub const HEADROOM_MIN: u64 = 65_536;

/// Events the storage processes on one node open: every worker thread of every process
/// calls `io_setup(max_events)`, and the kernel charges `max_events` for each.
pub fn storage_events(processes_per_node: u64, workers: u64, max_events: u64) -> u64 {
    processes_per_node
        .saturating_mul(workers)
        .saturating_mul(max_events)
}

/// Headroom: a quarter of the storage demand, at least [`HEADROOM_MIN`].
pub fn headroom(storage_events: u64) -> u64 {
    (storage_events / 4).max(HEADROOM_MIN)
}

/// Required `fs.aio-max-nr`: storage demand + what others hold now (`fs.aio-nr`) +
/// headroom, never below the cluster's floor.
pub fn required_aio_max_nr(
    processes_per_node: u64,
    workers: u64,
    max_events: u64,
    aio_nr: u64,
    floor: u64,
) -> u64 {
    let demand = storage_events(processes_per_node, workers, max_events);
    demand
        .saturating_add(aio_nr)
        .saturating_add(headroom(demand))
        .max(floor)
}

/// The value to write: the required one, but never lower than what is already set
/// (somebody else may have raised it for their own reasons).
pub fn target_aio_max_nr(current: u64, required: u64) -> u64 {
    current.max(required)
}

/// How the storage workers are sized, and so what `fs.aio-max-nr` must hold: the one sizing
/// type of the agent's `check`, `tune` and cluster pass (field widths as in `spec.aio`).
#[derive(serde::Serialize, serde::Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizing {
    pub max_events: u32,
    pub workers: u32,
    pub processes_per_node: u32,
    /// Never set `fs.aio-max-nr` below this.
    pub aio_max_nr_floor: u64,
}

impl Default for Sizing {
    fn default() -> Self {
        Self::from_spec(&AioSpec::default(), &SysctlSpec::default())
    }
}

impl Sizing {
    /// From a StorageCluster's `spec.aio` and `spec.sysctl`.
    pub fn from_spec(aio: &AioSpec, sysctl: &SysctlSpec) -> Self {
        Self {
            max_events: aio.max_events,
            workers: aio.workers,
            processes_per_node: aio.processes_per_node,
            aio_max_nr_floor: sysctl.aio_max_nr,
        }
    }

    /// libaio events the storage processes open (`processes × workers × max_events`).
    pub fn storage_events(&self) -> u64 {
        storage_events(
            self.processes_per_node.into(),
            self.workers.into(),
            self.max_events.into(),
        )
    }

    /// Required `fs.aio-max-nr` given what others hold now (`fs.aio-nr`).
    pub fn required(&self, aio_nr: u64) -> u64 {
        required_aio_max_nr(
            self.processes_per_node.into(),
            self.workers.into(),
            self.max_events.into(),
            aio_nr,
            self.aio_max_nr_floor,
        )
    }

    /// `2 processes × 8 workers × 512 events`, for people.
    pub fn demand_text(&self) -> String {
        let n = |v: u32, one: &str, many: &str| format!("{v} {}", if v == 1 { one } else { many });
        format!(
            "{} × {} × {}",
            n(self.processes_per_node, "process", "processes"),
            n(self.workers, "worker", "workers"),
            n(self.max_events, "event", "events")
        )
    }

    /// How [`Self::required`] is made up, for people.
    pub fn explain(&self, aio_nr: u64) -> String {
        let events = self.storage_events();
        format!(
            "{} = {events} + fs.aio-nr {aio_nr} + headroom {}, floor {}",
            self.demand_text(),
            headroom(events),
            self.aio_max_nr_floor
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threefs_default_fits_under_default_floor() {
        // 3FS: 32 threads × 512 events, 2 processes.
        let demand = storage_events(2, 32, 512);
        assert_eq!(demand, 32_768);
        assert_eq!(headroom(demand), HEADROOM_MIN);
        assert_eq!(required_aio_max_nr(2, 32, 512, 0, 1_048_576), 1_048_576);
    }

    #[test]
    fn demand_above_floor_wins() {
        // 4 × 64 × 4096 = 1 Mi events, + 1000 held + 256 Ki headroom.
        let r = required_aio_max_nr(4, 64, 4096, 1000, 65_536);
        assert_eq!(r, 1_048_576 + 1000 + 262_144);
    }

    #[test]
    fn floor_zero_still_counts_demand() {
        assert_eq!(required_aio_max_nr(1, 8, 512, 0, 0), 4096 + HEADROOM_MIN);
    }

    #[test]
    fn never_lowers() {
        assert_eq!(target_aio_max_nr(2_000_000, 1_048_576), 2_000_000);
        assert_eq!(target_aio_max_nr(65_536, 1_048_576), 1_048_576);
    }

    #[test]
    fn saturates_instead_of_overflowing() {
        assert_eq!(
            required_aio_max_nr(u64::MAX, u64::MAX, u64::MAX, 1, 0),
            u64::MAX
        );
    }
}
