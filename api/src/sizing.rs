//! How much `fs.aio-max-nr` a node needs. Pure arithmetic shared by the agent (which
//! tunes) and the operator (which reports); see DESIGN.md §5.

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
