//! `ringmaster-agent tune`: raise `fs.aio-max-nr` safely, and the [`AioMaxNrTuner`] library the
//! cluster agent calls.
//!
//! Rules: never lower the value; record the ORIGINAL value in a state file *before* the
//! first write, so a tuner killed half-way still knows what to put back; keep the first
//! original across repeated applies; read back and verify; restore only what is still ours.
//!
//! State file (JSON, written atomically; see docs/check.md):
//! ```json
//! {"version":1,"sysctl":"fs.aio-max-nr","original":65536,"applied":1048576,
//!  "persist_path":"/etc/sysctl.d/60-ringmaster.conf","updated_at":"2026-11-29T23:59:00Z"}
//! ```
//! `original` is the value before Ringmaster first raised it, `applied` the value it last
//! wrote (or is about to write), `persist_path` the sysctl.d file it wrote, if any,
//! `boot_id` the boot it was written in (absent in files from before it was recorded).
//!
//! Across a reboot (a `boot_id` other than this boot's): the kernel booted with the value
//! the host's own configuration gives it. If our sysctl.d file is still there, that value
//! came from it, so the recorded original stays the original. Without it, the boot value
//! *is* what the host has without Ringmaster (usually the recorded original; if an admin
//! changed the host's sysctl.d meanwhile, theirs is the one to keep), so the old state
//! no longer describes anything of ours: it is dropped, and the next raise records the
//! boot value as the original. A restore never puts back a value from an earlier boot
//! over one the host booted with.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use ringmaster_api::cluster::{AioSpec, SysctlSpec};
use ringmaster_api::sizing;
/// The one sizing type (`ringmaster_api::sizing::Sizing`), re-exported for `check` and `tune`.
pub use ringmaster_api::sizing::Sizing;
use serde::{Deserialize, Serialize};

use ringmaster_ring::host::{sysctl, sysctl::SysctlError, AIO_MAX_NR, AIO_NR};

/// Where `tune` keeps its state unless `--state` says otherwise.
pub const DEFAULT_STATE_PATH: &str = "/var/lib/ringmaster/aio-max-nr.json";
/// The sysctl.d file the cluster agent persists to (`sysctl.persist: true`).
pub const DEFAULT_PERSIST_PATH: &str = "/etc/sysctl.d/60-ringmaster.conf";
/// First line of every sysctl.d file we write; we only ever remove files that start so.
pub const PERSIST_MARKER: &str = "# Written by ringmaster-agent tune";
/// Version of the state file format.
pub const STATE_VERSION: u32 = 1;

/// The sizing flags `check` and `tune` share; defaults are the StorageCluster defaults.
#[derive(clap::Args, Debug, Clone)]
pub struct SizingArgs {
    /// Ring entries and libaio events per worker thread (aio.maxEvents).
    #[arg(long, default_value_t = AioSpec::default().max_events,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_events: u32,
    /// Read worker threads per storage process (aio.workers).
    #[arg(long, default_value_t = AioSpec::default().workers,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: u32,
    /// Storage processes per node, each opening workers × max-events libaio events (aio.processesPerNode).
    #[arg(long, default_value_t = AioSpec::default().processes_per_node,
          value_parser = clap::value_parser!(u32).range(1..=256))]
    pub processes_per_node: u32,
    /// Never set fs.aio-max-nr below this (sysctl.aioMaxNr).
    #[arg(long, default_value_t = SysctlSpec::default().aio_max_nr)]
    pub aio_max_nr_floor: u64,
}

impl From<&SizingArgs> for Sizing {
    fn from(a: &SizingArgs) -> Self {
        Self {
            max_events: a.max_events,
            workers: a.workers,
            processes_per_node: a.processes_per_node,
            aio_max_nr_floor: a.aio_max_nr_floor,
        }
    }
}

/// What the tuner remembers (the state file).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TuneState {
    pub version: u32,
    pub sysctl: String,
    /// Value before Ringmaster first raised it.
    pub original: u64,
    /// Value Ringmaster last wrote (or was about to write).
    pub applied: u64,
    /// sysctl.d file Ringmaster wrote, removed on restore.
    pub persist_path: Option<PathBuf>,
    /// RFC 3339.
    pub updated_at: String,
    /// Boot the state was written in (`crate::boot`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
}

/// Whether a state written in `st.boot_id` still describes this boot (`now`): same boot,
/// unknown boot on either side, or our sysctl.d file (`persist_ours`) set the boot value.
pub fn state_holds_across_boot(st: &TuneState, now: Option<&str>, persist_ours: bool) -> bool {
    match (st.boot_id.as_deref(), now) {
        (Some(then), Some(now)) if then != now => persist_ours,
        _ => true,
    }
}

/// What [`AioMaxNrTuner::apply`] would do now.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Plan {
    pub current: u64,
    pub aio_nr: u64,
    pub required: u64,
    /// `max(current, required)`: never lower.
    pub target: u64,
    pub would_change: bool,
    /// `current >= required` (what Verify mode reports).
    pub satisfied: bool,
    /// Original value recorded by an earlier apply, if any.
    pub recorded_original: Option<u64>,
    /// How `required` is made up.
    pub explanation: String,
}

/// What [`AioMaxNrTuner::apply`] did.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Outcome {
    pub previous: u64,
    /// Read back after writing.
    pub current: u64,
    pub required: u64,
    pub changed: bool,
    /// Original value recorded in the state file (None when nothing was recorded).
    pub original: Option<u64>,
    pub persisted: Option<PathBuf>,
}

/// What [`AioMaxNrTuner::restore`] did.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum RestoreOutcome {
    /// Put `original` back (the value was still the one we set).
    Restored { from: u64, to: u64 },
    /// The value already is the original (e.g. a tune killed before its write).
    AlreadyOriginal { value: u64 },
    /// Someone else changed the value after us; left as it is.
    LeftAlone {
        current: u64,
        applied: u64,
        original: u64,
    },
    /// No state file: nothing of ours to restore.
    NothingRecorded,
}

/// Why tuning failed. Every message is one line with the fix.
#[derive(thiserror::Error, Debug)]
pub enum TuneError {
    #[error(transparent)]
    Sysctl(#[from] SysctlError),
    #[error(
        "cannot write the tune state file {path}: {source}; fix: make its directory writable \
         or choose another with --state"
    )]
    StateWrite {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the tune state file {path}: {reason}; fix: check or remove the file")]
    StateRead { path: PathBuf, reason: String },
    #[error(
        "wrote {name}={wrote} but read back {read}: something else is changing it at the same \
         time (another tuner, a sysctl.d reload); fix: find and stop the other writer"
    )]
    VerifyFailed { name: String, wrote: u64, read: u64 },
    #[error("cannot write the sysctl.d file {path}: {reason}; fix: choose another --persist path")]
    Persist { path: PathBuf, reason: String },
}

/// This host's `fs.aio-max-nr`: raises it (never lowers), records the original in a state file
/// before the first write, verifies and restores it. The `tune` command uses it directly; the
/// cluster agent through [`crate::cluster::tuning::ClusterTuning`].
#[derive(Clone, Debug)]
pub struct AioMaxNrTuner {
    state_path: PathBuf,
}

impl AioMaxNrTuner {
    pub fn new(state_path: impl Into<PathBuf>) -> Self {
        Self {
            state_path: state_path.into(),
        }
    }

    pub fn state_path(&self) -> &Path {
        &self.state_path
    }

    /// The recorded state, `None` when nothing was ever changed.
    pub fn state(&self) -> Result<Option<TuneState>, TuneError> {
        let bytes = match crate::safe_fs::read_bounded(&self.state_path, 64 * 1024) {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(None),
            Err(e) => {
                return Err(TuneError::StateRead {
                    path: self.state_path.clone(),
                    reason: e.to_string(),
                })
            }
        };
        let st: TuneState = serde_json::from_slice(&bytes).map_err(|e| TuneError::StateRead {
            path: self.state_path.clone(),
            reason: e.to_string(),
        })?;
        if st.version != STATE_VERSION || st.sysctl != AIO_MAX_NR {
            return Err(TuneError::StateRead {
                path: self.state_path.clone(),
                reason: format!(
                    "unsupported state (version {}, sysctl {})",
                    st.version, st.sysctl
                ),
            });
        }
        Ok(Some(st))
    }

    /// The recorded state if it still describes this boot (see the module docs); a state
    /// from an earlier boot that nothing of ours carried over is `None`, with the reason.
    pub fn state_this_boot(&self) -> Result<(Option<TuneState>, Option<String>), TuneError> {
        let Some(st) = self.state()? else {
            return Ok((None, None));
        };
        let now = crate::boot::boot_id();
        let persist_ours = st
            .persist_path
            .as_ref()
            .is_some_and(|p| fs::read_to_string(p).is_ok_and(|t| t.starts_with(PERSIST_MARKER)));
        if state_holds_across_boot(&st, now.as_deref(), persist_ours) {
            return Ok((Some(st), None));
        }
        Ok((
            None,
            Some(format!(
                "{} was written in boot {} and this is boot {}: {AIO_MAX_NR} is back to the \
                 value the host booted with (no sysctl.d file of ours), so that value is the \
                 original from now on",
                self.state_path.display(),
                st.boot_id.as_deref().unwrap_or("?"),
                now.as_deref().unwrap_or("?"),
            )),
        ))
    }

    /// Drop a state file left by an earlier boot (see [`Self::state_this_boot`]).
    fn forget_earlier_boot(&self) -> Result<Option<TuneState>, TuneError> {
        let (st, stale) = self.state_this_boot()?;
        if let Some(why) = stale {
            tracing::info!("{why}");
            self.remove_state()?;
        }
        Ok(st)
    }

    /// Write the state atomically and durably (temp file, fsync, rename, fsync dir).
    fn write_state(&self, st: &TuneState) -> Result<(), TuneError> {
        let err = |source| TuneError::StateWrite {
            path: self.state_path.clone(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(st).map_err(|e| err(io::Error::other(e)))?;
        write_atomic(&self.state_path, &bytes).map_err(err)
    }

    fn remove_state(&self) -> Result<(), TuneError> {
        match fs::remove_file(&self.state_path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(TuneError::StateWrite {
                path: self.state_path.clone(),
                source,
            }),
        }
    }

    /// What [`Self::apply`] would do now. Writes nothing.
    pub fn plan(&self, s: &Sizing) -> Result<Plan, TuneError> {
        let current = sysctl::read_u64(AIO_MAX_NR)?;
        let aio_nr = sysctl::read_u64(AIO_NR)?;
        let required = s.required(aio_nr);
        let target = sizing::target_aio_max_nr(current, required);
        Ok(Plan {
            current,
            aio_nr,
            required,
            target,
            would_change: target != current,
            satisfied: current >= required,
            recorded_original: self.state_this_boot()?.0.map(|st| st.original),
            explanation: s.explain(aio_nr),
        })
    }

    /// Verify mode: the plan, with `satisfied` saying whether the value is high enough.
    pub fn verify(&self, s: &Sizing) -> Result<Plan, TuneError> {
        self.plan(s)
    }

    /// Raise `fs.aio-max-nr` to the required value (never lower), recording the original
    /// first; with `persist`, also write a sysctl.d file with the value.
    pub fn apply(&self, s: &Sizing, persist: Option<&Path>) -> Result<Outcome, TuneError> {
        let existing = self.forget_earlier_boot()?;
        let plan = self.plan(s)?;
        // A sysctl.d file asked for now, or written by an earlier apply, follows the value.
        let persist_to = persist
            .map(Path::to_path_buf)
            .or_else(|| existing.as_ref().and_then(|st| st.persist_path.clone()));
        let persist_is_current = persist_to.as_ref().is_none_or(|p| {
            fs::read_to_string(p).is_ok_and(|t| t == persist_text(plan.target))
                && existing.as_ref().and_then(|st| st.persist_path.as_ref()) == Some(p)
        });
        if !plan.would_change && persist_is_current {
            return Ok(Outcome {
                previous: plan.current,
                current: plan.current,
                required: plan.required,
                changed: false,
                original: existing.map(|st| st.original),
                persisted: persist_to,
            });
        }
        if plan.would_change {
            // Fail before recording anything when the write cannot work.
            sysctl::check_writable(AIO_MAX_NR)?;
        }
        let original = existing.as_ref().map_or(plan.current, |st| st.original);
        let state = TuneState {
            version: STATE_VERSION,
            sysctl: AIO_MAX_NR.into(),
            original,
            applied: plan.target,
            persist_path: persist_to.clone(),
            updated_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            boot_id: crate::boot::boot_id(),
        };
        // The original goes to disk BEFORE the sysctl changes.
        self.write_state(&state)?;
        if plan.would_change {
            if let Err(e) = sysctl::write_u64(AIO_MAX_NR, plan.target) {
                // Nothing changed: put the state back as it was.
                let _ = match &existing {
                    Some(st) => self.write_state(st),
                    None => self.remove_state(),
                };
                return Err(e.into());
            }
        }
        let current = sysctl::read_u64(AIO_MAX_NR)?;
        if current != plan.target {
            return Err(TuneError::VerifyFailed {
                name: AIO_MAX_NR.into(),
                wrote: plan.target,
                read: current,
            });
        }
        if let Some(p) = &persist_to {
            write_persist(p, plan.target)?;
        }
        Ok(Outcome {
            previous: plan.current,
            current,
            required: plan.required,
            changed: plan.would_change,
            original: Some(original),
            persisted: persist_to,
        })
    }

    /// What [`Self::restore`] would do now. Writes nothing.
    pub fn plan_restore(&self) -> Result<RestoreOutcome, TuneError> {
        let Some(st) = self.state_this_boot()?.0 else {
            return Ok(RestoreOutcome::NothingRecorded);
        };
        let current = sysctl::read_u64(AIO_MAX_NR)?;
        Ok(if current == st.original {
            RestoreOutcome::AlreadyOriginal { value: current }
        } else if current == st.applied {
            RestoreOutcome::Restored {
                from: current,
                to: st.original,
            }
        } else {
            RestoreOutcome::LeftAlone {
                current,
                applied: st.applied,
                original: st.original,
            }
        })
    }

    /// Put back exactly the original value, if the current value is still the one we set;
    /// remove our sysctl.d file and the state file.
    pub fn restore(&self) -> Result<RestoreOutcome, TuneError> {
        let outcome = self.plan_restore()?;
        let Some(st) = self.forget_earlier_boot()? else {
            return Ok(outcome);
        };
        if let RestoreOutcome::Restored { to, .. } = outcome {
            sysctl::check_writable(AIO_MAX_NR)?;
            let read = sysctl::write_u64_verified(AIO_MAX_NR, to)?;
            if read != to {
                return Err(TuneError::VerifyFailed {
                    name: AIO_MAX_NR.into(),
                    wrote: to,
                    read,
                });
            }
        }
        if let Some(p) = &st.persist_path {
            remove_persist(p)?;
        }
        self.remove_state()?;
        Ok(outcome)
    }
}

use crate::safe_fs::write_atomic;

/// Text of the sysctl.d file for `value`.
pub fn persist_text(value: u64) -> String {
    format!(
        "{PERSIST_MARKER}: libaio events for io_uring/libaio storage workers.\n\
         # Removed by: ringmaster-agent tune --restore <state file>\n\
         {AIO_MAX_NR} = {value}\n"
    )
}

fn write_persist(path: &Path, value: u64) -> Result<(), TuneError> {
    let err = |reason: String| TuneError::Persist {
        path: path.to_path_buf(),
        reason,
    };
    match fs::read_to_string(path) {
        Ok(old) if !old.starts_with(PERSIST_MARKER) => {
            return Err(err(
                "it exists and was not written by ringmaster-agent".into()
            ))
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e.to_string())),
    }
    write_atomic(path, persist_text(value).as_bytes()).map_err(|e| err(e.to_string()))
}

fn remove_persist(path: &Path) -> Result<(), TuneError> {
    match fs::read_to_string(path) {
        Ok(text) if text.starts_with(PERSIST_MARKER) => {
            fs::remove_file(path).map_err(|e| TuneError::Persist {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })
        }
        // Not ours any more, or already gone: leave it.
        _ => Ok(()),
    }
}

/// `ringmaster-agent tune` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct TuneArgs {
    #[command(flatten)]
    pub sizing: SizingArgs,
    /// Also write this sysctl.d file (e.g. /etc/sysctl.d/60-ringmaster.conf) so a reboot keeps the value.
    #[arg(long, value_name = "PATH", conflicts_with = "restore")]
    pub persist: Option<PathBuf>,
    /// Put back the original value recorded in this state file (only if the value is still ours).
    #[arg(long, value_name = "FILE")]
    pub restore: Option<PathBuf>,
    /// Change nothing; say what would be done.
    #[arg(long)]
    pub dry_run: bool,
    /// State file recording the original value.
    #[arg(long, value_name = "FILE", env = "RINGMASTER_TUNE_STATE", default_value = DEFAULT_STATE_PATH)]
    pub state: PathBuf,
}

/// Run `tune`: exit 0 on success (or nothing to do), 1 on any error (one line with the fix).
pub fn run(a: TuneArgs) -> i32 {
    match run_inner(&a) {
        Ok(lines) => {
            for l in lines {
                println!("{l}");
            }
            0
        }
        Err(e) => {
            eprintln!("ringmaster-agent tune: error: {e}");
            1
        }
    }
}

fn run_inner(a: &TuneArgs) -> Result<Vec<String>, TuneError> {
    let dry = if a.dry_run { "dry run: " } else { "" };
    if let Some(state) = &a.restore {
        let t = AioMaxNrTuner::new(state);
        let persisted = t.state()?.and_then(|st| st.persist_path);
        let outcome = if a.dry_run {
            let o = t.plan_restore()?;
            if let RestoreOutcome::Restored { .. } = o {
                sysctl::check_writable(AIO_MAX_NR)?;
            }
            o
        } else {
            t.restore()?
        };
        let (verb, left) = if a.dry_run {
            ("would put back", "would leave")
        } else {
            ("put back", "left")
        };
        let line = match &outcome {
            RestoreOutcome::Restored { from, to } => {
                format!("{dry}{AIO_MAX_NR}: {verb} the original {to} (was {from})")
            }
            RestoreOutcome::AlreadyOriginal { value } => {
                format!("{dry}{AIO_MAX_NR} already is the original {value}; nothing to put back")
            }
            RestoreOutcome::LeftAlone {
                current,
                applied,
                original,
            } => format!(
                "{dry}{AIO_MAX_NR} is {current}, not the {applied} Ringmaster set: someone else \
                 changed it, so it is {left} as it is (the original was {original})"
            ),
            RestoreOutcome::NothingRecorded => format!(
                "{dry}no tune state in {}: nothing to restore",
                state.display()
            ),
        };
        let mut lines = vec![line];
        if !a.dry_run && outcome != RestoreOutcome::NothingRecorded {
            if let Some(p) = persisted {
                lines.push(format!("removed the sysctl.d file {}", p.display()));
            }
            lines.push(format!("removed the state file {}", state.display()));
        }
        return Ok(lines);
    }

    let s = Sizing::from(&a.sizing);
    let t = AioMaxNrTuner::new(&a.state);
    let plan = t.plan(&s)?;
    let required = format!("required {} = {}", plan.required, plan.explanation);
    if a.dry_run {
        if plan.would_change {
            sysctl::check_writable(AIO_MAX_NR)?;
            return Ok(vec![format!(
                "{dry}would raise {AIO_MAX_NR} {} -> {} ({required}) and record the original {} \
                 in {}; nothing changed",
                plan.current,
                plan.target,
                plan.recorded_original.unwrap_or(plan.current),
                a.state.display()
            )]);
        }
        return Ok(vec![format!(
            "{dry}{AIO_MAX_NR} {} already >= {required}; would leave it (never lowered); nothing \
             changed",
            plan.current
        )]);
    }
    let o = t.apply(&s, a.persist.as_deref())?;
    let mut lines = vec![if o.changed {
        format!(
            "{AIO_MAX_NR}: raised {} -> {} ({required}); verified by reading back",
            o.previous, o.current
        )
    } else {
        format!(
            "{AIO_MAX_NR} {} already >= {required}; left as it is (never lowered)",
            o.current
        )
    }];
    if let (Some(orig), true) = (o.original, o.changed || o.persisted.is_some()) {
        lines.push(format!(
            "original {orig} recorded in {}; undo with: ringmaster-agent tune --restore {}",
            a.state.display(),
            a.state.display()
        ));
    }
    if let Some(p) = &o.persisted {
        lines.push(format!(
            "persisted {AIO_MAX_NR} = {} in {}",
            o.current,
            p.display()
        ));
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_sizing_is_the_storagecluster_default() {
        let s = Sizing::default();
        assert_eq!(
            (
                s.max_events,
                s.workers,
                s.processes_per_node,
                s.aio_max_nr_floor
            ),
            (512, 8, 1, 1_048_576)
        );
        assert_eq!(s.storage_events(), 4096);
        assert_eq!(s.required(0), 1_048_576);
    }

    #[test]
    fn required_value_formula() {
        // Demand above the floor: 4 × 64 × 4096 = 1 Mi events + aio-nr + a quarter headroom.
        let s = Sizing {
            max_events: 4096,
            workers: 64,
            processes_per_node: 4,
            aio_max_nr_floor: 65_536,
        };
        assert_eq!(s.required(1000), 1_048_576 + 1000 + 262_144);
        // Small demand: headroom is at least 64 Ki, the floor still wins when higher.
        let s = Sizing {
            max_events: 512,
            workers: 8,
            processes_per_node: 1,
            aio_max_nr_floor: 0,
        };
        assert_eq!(s.required(100), 4096 + 100 + 65_536);
        assert!(s
            .explain(100)
            .contains("1 process × 8 workers × 512 events = 4096"));
    }

    #[test]
    fn persist_text_starts_with_marker_and_sets_value() {
        let t = persist_text(1_048_576);
        assert!(t.starts_with(PERSIST_MARKER));
        assert!(t.contains("\nfs.aio-max-nr = 1048576\n"));
    }

    #[test]
    fn a_state_from_another_boot_holds_only_through_our_sysctl_d_file() {
        let st = |boot: Option<&str>| TuneState {
            version: STATE_VERSION,
            sysctl: AIO_MAX_NR.into(),
            original: 65_536,
            applied: 1_048_576,
            persist_path: None,
            updated_at: String::new(),
            boot_id: boot.map(String::from),
        };
        assert!(state_holds_across_boot(&st(Some("a")), Some("a"), false));
        assert!(!state_holds_across_boot(&st(Some("a")), Some("b"), false));
        assert!(state_holds_across_boot(&st(Some("a")), Some("b"), true));
        // Unknown on either side (a state from before boot ids, no procfs): kept.
        assert!(state_holds_across_boot(&st(None), Some("b"), false));
        assert!(state_holds_across_boot(&st(Some("a")), None, false));
    }

    #[test]
    fn state_round_trips_and_rejects_foreign_files() {
        let dir = std::env::temp_dir().join(format!("rm-tune-unit-{}", std::process::id()));
        let t = AioMaxNrTuner::new(dir.join("state.json"));
        assert_eq!(t.state().unwrap(), None);
        let st = TuneState {
            version: STATE_VERSION,
            sysctl: AIO_MAX_NR.into(),
            original: 65_536,
            applied: 1_048_576,
            persist_path: None,
            updated_at: "2026-01-01T00:00:00Z".into(),
            boot_id: Some("b1".into()),
        };
        t.write_state(&st).unwrap();
        assert_eq!(t.state().unwrap(), Some(st));
        fs::write(t.state_path(), b"{\"not\": \"ours\"}").unwrap();
        let e = t.state().unwrap_err().to_string();
        assert!(e.contains("state.json") && e.contains("fix"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
