//! The StorageNode heartbeat: the agent renews `status.heartbeatTime` like a node renews
//! its Lease, so a report whose agent is gone (stopped, crash-looping, image not pullable,
//! node rebooted and not yet re-tuned) ages out and the operator counts it as unknown.
//! Renewals are counted apart from content writes: a steady node writes nothing but them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use ringmaster_api::StorageNodeStatus;

/// What to do with a freshly computed status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    /// Same content, heartbeat young enough: write nothing.
    Nothing,
    /// Same content, heartbeat due: write only to renew it.
    Heartbeat,
    /// Content changed (the heartbeat is renewed with it).
    Content,
}

/// Stamp `status` with the boot id and heartbeat fields and decide whether to write.
/// `every` is `--heartbeat-seconds`, `resync` the agent's pass interval: a pass can come
/// up to `resync` after a renewal fell due, so the published interval is their sum.
pub fn stamp(
    status: &mut StorageNodeStatus,
    previous: Option<&StorageNodeStatus>,
    content_changed_elsewhere: bool,
    boot_id: Option<&str>,
    every: u64,
    resync: u64,
    now: Timestamp,
) -> Write {
    let now = Timestamp::from_second(now.as_second()).unwrap_or(now);
    status.boot_id = boot_id.map(String::from);
    status.heartbeat_seconds = Some((every + resync) as i64);
    let last = previous.and_then(|p| p.heartbeat_time.clone());
    status.heartbeat_time = last.clone();
    let decision = if content_changed_elsewhere || previous != Some(&*status) {
        Write::Content
    } else if last.is_none_or(|t| now.as_second() - t.0.as_second() >= every as i64) {
        Write::Heartbeat
    } else {
        Write::Nothing
    };
    if decision != Write::Nothing {
        status.heartbeat_time = Some(Time(now));
    }
    decision
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    #[test]
    fn renews_when_due_and_only_then() {
        let mut first = StorageNodeStatus::default();
        assert_eq!(
            stamp(&mut first, None, false, Some("b"), 30, 3, at(0)),
            Write::Content
        );
        assert_eq!(first.heartbeat_time, Some(Time(at(0))));
        assert_eq!(first.heartbeat_seconds, Some(33));
        assert_eq!(first.boot_id.as_deref(), Some("b"));

        let mut again = StorageNodeStatus::default();
        assert_eq!(
            stamp(&mut again, Some(&first), false, Some("b"), 30, 3, at(29)),
            Write::Nothing
        );
        assert_eq!(again, first, "nothing to write means the same status");

        let mut due = StorageNodeStatus::default();
        assert_eq!(
            stamp(&mut due, Some(&first), false, Some("b"), 30, 3, at(30)),
            Write::Heartbeat
        );
        assert_eq!(due.heartbeat_time, Some(Time(at(30))));
    }

    #[test]
    fn a_new_boot_or_other_content_is_a_content_write() {
        let mut first = StorageNodeStatus::default();
        stamp(&mut first, None, false, Some("b1"), 30, 3, at(0));
        let mut rebooted = StorageNodeStatus::default();
        assert_eq!(
            stamp(&mut rebooted, Some(&first), false, Some("b2"), 30, 3, at(1)),
            Write::Content
        );
        assert_eq!(rebooted.heartbeat_time, Some(Time(at(1))));
        let mut spec = StorageNodeStatus::default();
        assert_eq!(
            stamp(&mut spec, Some(&first), true, Some("b1"), 30, 3, at(1)),
            Write::Content
        );
    }
}
