//! `ringmaster-agent check`: can the storage read path run on this host, and if not,
//! exactly why and what to do. Text table or JSON (keys documented in docs/check.md).
//! Exit 0 ready, 1 not ready, 2 the check itself could not run.

use std::fmt::Write as _;
use std::path::PathBuf;

use ringmaster_api::cluster::AioSpec;
use serde::{Deserialize, Serialize};

use crate::tune::{Sizing, SizingArgs};
use ringmaster_ring::host::{self, HostFacts};
use ringmaster_ring::probe::{self, AioProbe, ProbeParams, UringProbe};

/// Exit status: ready.
pub const EXIT_READY: i32 = 0;
/// Exit status: not ready (the report says why).
pub const EXIT_NOT_READY: i32 = 1;
/// Exit status: the check could not run.
pub const EXIT_ERROR: i32 = 2;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OutputFormat {
    #[default]
    Text,
    Json,
}

/// `ringmaster-agent check` flags; defaults are the StorageCluster defaults.
#[derive(clap::Args, Debug, Clone)]
pub struct CheckArgs {
    #[command(flatten)]
    pub sizing: SizingArgs,
    /// Smallest ring the read workers may shrink to when --max-events fails with EINVAL/ENOMEM (aio.minMaxEvents).
    #[arg(long, default_value_t = AioSpec::default().min_max_events,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub min_max_events: u32,
    /// `text` (a table, a verdict and advice) or `json` (stable keys, see docs/check.md).
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

/// `kernel.*` of the report.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct KernelSection {
    pub release: String,
}

/// `sysctl.*` of the report.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SysctlSection {
    pub aio_max_nr: u64,
    pub aio_nr: u64,
    /// `processes × workers × max_events + aio_nr + headroom`, never below the floor.
    pub aio_max_nr_required: u64,
    /// `processes × workers × max_events`: what the storage workers open.
    pub aio_storage_events: u64,
    /// `aio_nr + aio_storage_events <= aio_max_nr`: the workers can start now.
    pub aio_fits: bool,
    pub io_uring_disabled: Option<i64>,
    pub io_uring_group: Option<i64>,
}

/// `process.*` of the report: the security context the probe ran under.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ProcessSection {
    pub seccomp_mode: String,
    /// RLIMIT_MEMLOCK soft limit; null = unlimited.
    pub memlock_bytes: Option<u64>,
    pub cap_sys_admin: bool,
    pub cap_ipc_lock: bool,
    pub euid: u32,
}

/// `sizing.*`: what was checked for.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SizingSection {
    pub max_events: u32,
    pub min_max_events: u32,
    pub workers: u32,
    pub processes_per_node: u32,
    pub aio_max_nr_floor: u64,
}

/// The whole report (JSON keys are stable).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Report {
    pub kernel: KernelSection,
    pub io_uring: UringProbe,
    pub libaio: AioProbe,
    pub sysctl: SysctlSection,
    pub process: ProcessSection,
    pub sizing: SizingSection,
    pub ready: bool,
    /// One line: `READY — ...` or `NOT READY — ...`.
    pub verdict: String,
    /// What to do, one line each, most important first.
    pub advice: Vec<String>,
}

/// The check could not run.
#[derive(thiserror::Error, Debug)]
pub enum CheckError {
    #[error("cannot read host facts: {0}")]
    Host(#[from] host::HostError),
    #[error("{0}")]
    Probe(String),
    #[error("--min-max-events {min} is larger than --max-events {max}: lower --min-max-events or raise --max-events")]
    MinAboveMax { min: u32, max: u32 },
}

/// Assemble the report from facts and probe results (pure; reusable by other code).
pub fn build_report(
    sizing: &Sizing,
    min_max_events: u32,
    facts: &HostFacts,
    uring: &UringProbe,
    aio: &AioProbe,
) -> Report {
    let storage = sizing.storage_events();
    let required = sizing.required(facts.aio_nr);
    let fits = facts.aio_nr.saturating_add(storage) <= facts.aio_max_nr;
    let ready = uring.supported && uring.read_verified && aio.ok && fits;

    let mut advice = Vec::new();
    let mut problems = Vec::new();
    if !uring.supported {
        problems.push(format!(
            "io_uring unsupported: {}",
            uring.reason.as_deref().unwrap_or("unknown")
        ));
        advice.push(format!(
            "io_uring: {}. Fix: {}",
            uring.message.as_deref().unwrap_or("probe failed"),
            uring.fix.as_deref().unwrap_or("see docs/check.md")
        ));
    } else if uring.ring_entries < uring.requested_entries {
        advice.push(format!(
            "io_uring: {}. Fix: {}",
            uring.message.as_deref().unwrap_or("ring shrunk"),
            uring.fix.as_deref().unwrap_or("lower --max-events")
        ));
    }
    if !aio.ok {
        problems.push(format!(
            "libaio io_setup({}) failed: {}",
            aio.max_events,
            aio.reason.as_deref().unwrap_or("unknown")
        ));
        advice.push(format!(
            "libaio: {}. Fix: {}",
            aio.message.as_deref().unwrap_or("io_setup failed"),
            aio.fix.as_deref().unwrap_or("see io_setup(2)")
        ));
    }
    if !fits {
        problems.push(format!(
            "fs.aio-max-nr {} cannot hold {storage} more libaio events",
            facts.aio_max_nr
        ));
        if aio.ok || aio.reason.as_deref() != Some("EAGAIN") {
            advice.push(format!(
                "fs.aio-max-nr: {} < fs.aio-nr {} + {storage} events the storage workers open \
                 ({}). Fix: sudo ringmaster-agent tune (raises it to {required})",
                facts.aio_max_nr,
                facts.aio_nr,
                sizing.demand_text()
            ));
        } else {
            advice.push(format!(
                "fs.aio-max-nr: the storage workers need {storage} events ({}); sudo \
                 ringmaster-agent tune raises it to {required} ({})",
                sizing.demand_text(),
                sizing.explain(facts.aio_nr)
            ));
        }
    } else if facts.aio_max_nr < required {
        advice.push(format!(
            "fs.aio-max-nr {} holds the workers now but is below the required {required} ({}), \
             which leaves room for restarts and other processes. Fix: sudo ringmaster-agent tune",
            facts.aio_max_nr,
            sizing.explain(facts.aio_nr)
        ));
    }

    let verdict = if ready {
        format!(
            "READY — io_uring supported ({} entries, read verified{}), libaio io_setup({}) ok, \
             fs.aio-max-nr holds the workers' {storage} events",
            uring.ring_entries,
            uring
                .read_mode
                .as_deref()
                .map(|m| format!(" with {m}"))
                .unwrap_or_default(),
            aio.max_events
        )
    } else {
        format!("NOT READY — {}", problems.join("; "))
    };

    Report {
        kernel: KernelSection {
            release: facts.kernel_release.clone(),
        },
        io_uring: uring.clone(),
        libaio: aio.clone(),
        sysctl: SysctlSection {
            aio_max_nr: facts.aio_max_nr,
            aio_nr: facts.aio_nr,
            aio_max_nr_required: required,
            aio_storage_events: storage,
            aio_fits: fits,
            io_uring_disabled: facts.io_uring_disabled,
            io_uring_group: facts.io_uring_group,
        },
        process: ProcessSection {
            seccomp_mode: facts.seccomp_mode.clone(),
            memlock_bytes: facts.memlock_bytes,
            cap_sys_admin: facts.cap_sys_admin,
            cap_ipc_lock: facts.cap_ipc_lock,
            euid: facts.euid,
        },
        sizing: SizingSection {
            max_events: sizing.max_events,
            min_max_events,
            workers: sizing.workers,
            processes_per_node: sizing.processes_per_node,
            aio_max_nr_floor: sizing.aio_max_nr_floor,
        },
        ready,
        verdict,
        advice,
    }
}

/// Gather facts, run both probes (scratch file in `scratch_dir`), build the report.
pub fn gather_report(
    sizing: &Sizing,
    min_max_events: u32,
    scratch_dir: PathBuf,
) -> Result<Report, CheckError> {
    if min_max_events > sizing.max_events {
        return Err(CheckError::MinAboveMax {
            min: min_max_events,
            max: sizing.max_events,
        });
    }
    let facts = host::try_gather()?;
    let uring = probe::probe_io_uring_with(
        &ProbeParams {
            max_events: sizing.max_events,
            min_max_events,
            scratch_dir,
        },
        &facts,
    );
    if let Some(e) = &uring.probe_error {
        return Err(CheckError::Probe(format!(
            "{e}; fix: set TMPDIR to a writable directory"
        )));
    }
    let aio = probe::probe_libaio(sizing.max_events, &facts);
    Ok(build_report(sizing, min_max_events, &facts, &uring, &aio))
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn bytes(b: u64) -> String {
    const MIB: u64 = 1 << 20;
    const KIB: u64 = 1 << 10;
    if b >= MIB && b.is_multiple_of(MIB) {
        format!("{} MiB", b / MIB)
    } else if b >= KIB && b.is_multiple_of(KIB) {
        format!("{} KiB", b / KIB)
    } else {
        format!("{b} B")
    }
}

/// The report as a table, a verdict line and advice lines.
pub fn render_text(r: &Report) -> String {
    let u = &r.io_uring;
    let opt = |v: Option<i64>| v.map_or("absent (kernel < 6.6)".to_string(), |v| v.to_string());
    let mut rows: Vec<(&str, String)> = vec![
        ("kernel.release", r.kernel.release.clone()),
        ("kernel.io_uring_disabled", opt(r.sysctl.io_uring_disabled)),
        ("kernel.io_uring_group", opt(r.sysctl.io_uring_group)),
        ("process.seccomp_mode", r.process.seccomp_mode.clone()),
        (
            "process.memlock",
            r.process
                .memlock_bytes
                .map_or("unlimited".into(), |b| format!("{} ({b} bytes)", bytes(b))),
        ),
        (
            "process.cap_ipc_lock",
            yes_no(r.process.cap_ipc_lock).into(),
        ),
        (
            "process.cap_sys_admin",
            yes_no(r.process.cap_sys_admin).into(),
        ),
    ];
    let setup = if u.ring_entries > 0 {
        let mut s = format!(
            "ok, {} entries (requested {})",
            u.ring_entries, u.requested_entries
        );
        if u.ring_entries < u.requested_entries {
            let _ = write!(
                s,
                "; {} entries failed with {}",
                u.requested_entries,
                u.reason.as_deref().unwrap_or("?")
            );
        }
        s
    } else {
        format!(
            "FAILED at {} with {} (errno {}), tried {}",
            u.failed_step.as_deref().unwrap_or("?"),
            u.reason.as_deref().unwrap_or("?"),
            u.errno.map_or("?".into(), |e| e.to_string()),
            u.tried_entries
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    rows.push(("io_uring.setup", setup));
    if u.ring_entries > 0 {
        rows.push((
            "io_uring.registered_buffer",
            format!("ok, {}", bytes(u.registered_buffer_bytes)),
        ));
        rows.push((
            "io_uring.opcodes",
            if u.missing_opcodes.is_empty() {
                format!("{} supported", u.opcodes.join(" "))
            } else {
                format!("MISSING {}", u.missing_opcodes.join(" "))
            },
        ));
        rows.push((
            "io_uring.read",
            if u.read_verified {
                format!(
                    "verified ({}, bytes match)",
                    u.read_mode.as_deref().unwrap_or("?")
                )
            } else if u.failed_step.as_deref() == Some("read") {
                format!("FAILED with {}", u.reason.as_deref().unwrap_or("?"))
            } else {
                "not attempted".into()
            },
        ));
    }
    rows.push(("io_uring.supported", yes_no(u.supported).into()));
    rows.push((
        "libaio.io_setup",
        if r.libaio.ok {
            format!("ok ({} events)", r.libaio.max_events)
        } else {
            format!(
                "FAILED with {} ({} events)",
                r.libaio.reason.as_deref().unwrap_or("?"),
                r.libaio.max_events
            )
        },
    ));
    rows.push(("fs.aio-max-nr", r.sysctl.aio_max_nr.to_string()));
    rows.push(("fs.aio-nr", r.sysctl.aio_nr.to_string()));
    rows.push((
        "fs.aio-max-nr needed now",
        format!(
            "{} (aio-nr + {} storage events): {}",
            r.sysctl.aio_nr + r.sysctl.aio_storage_events,
            r.sysctl.aio_storage_events,
            if r.sysctl.aio_fits {
                "fits"
            } else {
                "DOES NOT FIT"
            }
        ),
    ));
    rows.push((
        "fs.aio-max-nr required",
        format!(
            "{} (with headroom, floor {}){}",
            r.sysctl.aio_max_nr_required,
            r.sizing.aio_max_nr_floor,
            if r.sysctl.aio_max_nr >= r.sysctl.aio_max_nr_required {
                ": ok"
            } else {
                ": below, run tune"
            }
        ),
    ));

    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let sizing = Sizing {
        max_events: r.sizing.max_events,
        workers: r.sizing.workers,
        processes_per_node: r.sizing.processes_per_node,
        aio_max_nr_floor: r.sizing.aio_max_nr_floor,
    };
    let mut out = format!(
        "ringmaster-agent check: {} (min ring {})\n\n",
        sizing.demand_text(),
        r.sizing.min_max_events
    );
    for (k, v) in rows {
        let _ = writeln!(out, "  {k:<width$}  {v}");
    }
    let _ = writeln!(out, "\nverdict: {}", r.verdict);
    if !r.advice.is_empty() {
        out.push_str("advice:\n");
        for a in &r.advice {
            let _ = writeln!(out, "  - {a}");
        }
    }
    out
}

/// Run `check`: print the report, return the exit status.
pub fn run(a: CheckArgs) -> i32 {
    let sizing = Sizing::from(&a.sizing);
    match gather_report(&sizing, a.min_max_events, std::env::temp_dir()) {
        Ok(r) => {
            match a.output {
                OutputFormat::Text => print!("{}", render_text(&r)),
                OutputFormat::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&r).expect("report serializes")
                ),
            }
            if r.ready {
                EXIT_READY
            } else {
                EXIT_NOT_READY
            }
        }
        Err(e) => {
            eprintln!("ringmaster-agent check: cannot run the check: {e}");
            if a.output == OutputFormat::Json {
                println!(
                    "{}",
                    serde_json::json!({ "ready": false, "error": e.to_string() })
                );
            }
            EXIT_ERROR
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The report of a healthy host where io_uring and libaio both work.
    fn healthy_report() -> Report {
        build_report(
            &Sizing::default(),
            64,
            &HostFacts::healthy(),
            &good_uring(),
            &good_aio(),
        )
    }

    fn good_uring() -> UringProbe {
        UringProbe {
            supported: true,
            requested_entries: 512,
            ring_entries: 512,
            read_verified: true,
            read_mode: Some("O_DIRECT".into()),
            opcodes: vec!["READ".into(), "READ_FIXED".into(), "READV".into()],
            ..Default::default()
        }
    }

    fn good_aio() -> AioProbe {
        AioProbe {
            max_events: 512,
            ok: true,
            ..Default::default()
        }
    }

    #[test]
    fn ready_when_all_parts_work_but_advises_raising_below_required() {
        let r = healthy_report();
        assert!(r.ready, "{}", r.verdict);
        assert!(r.verdict.starts_with("READY"));
        assert_eq!(r.sysctl.aio_max_nr_required, 1_048_576);
        assert!(r.sysctl.aio_fits);
        assert_eq!(r.advice.len(), 1, "{:?}", r.advice);
        assert!(r.advice[0].contains("ringmaster-agent tune"));
    }

    #[test]
    fn not_ready_when_uring_fails_and_json_keys_are_stable() {
        let u = UringProbe {
            supported: false,
            errno: Some(38),
            reason: Some("ENOSYS".into()),
            message: Some("no io_uring".into()),
            fix: Some("allow it".into()),
            requested_entries: 512,
            ..Default::default()
        };
        let r = build_report(
            &Sizing::default(),
            64,
            &HostFacts::healthy(),
            &u,
            &good_aio(),
        );
        assert!(!r.ready);
        assert!(r.verdict.contains("ENOSYS"), "{}", r.verdict);
        let v = serde_json::to_value(&r).unwrap();
        for path in [
            "/kernel/release",
            "/io_uring/supported",
            "/io_uring/errno",
            "/io_uring/reason",
            "/io_uring/ring_entries",
            "/io_uring/read_verified",
            "/sysctl/aio_max_nr",
            "/sysctl/aio_nr",
            "/sysctl/aio_max_nr_required",
            "/sysctl/io_uring_disabled",
            "/process/seccomp_mode",
            "/process/memlock_bytes",
            "/ready",
            "/advice",
        ] {
            assert!(v.pointer(path).is_some(), "missing JSON key {path}");
        }
        assert_eq!(v.pointer("/io_uring/reason").unwrap(), "ENOSYS");
        assert!(v.pointer("/advice").unwrap().is_array());
    }

    #[test]
    fn not_ready_when_workers_do_not_fit_in_aio_max_nr() {
        let f = HostFacts {
            aio_max_nr: 4000,
            ..HostFacts::healthy()
        };
        let r = build_report(&Sizing::default(), 64, &f, &good_uring(), &good_aio());
        assert!(!r.ready);
        assert!(!r.sysctl.aio_fits);
        assert!(
            r.advice.iter().any(|a| a.contains("tune")),
            "{:?}",
            r.advice
        );
    }

    #[test]
    fn text_has_table_verdict_and_advice() {
        let r = healthy_report();
        let t = render_text(&r);
        assert!(t.contains("kernel.release"));
        assert!(t.contains("io_uring.read"));
        assert!(t.contains("\nverdict: READY"));
        assert!(t.contains("advice:\n  - "));
    }
}
