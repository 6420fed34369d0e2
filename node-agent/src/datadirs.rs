//! Checks of the configured data dirs as the reader itself will use them (its uid,
//! capabilities and mount view): each must exist, be a directory, and be openable and
//! searchable. A dir that fails is reported with a reason and left out of the read
//! service, so one missing disk does not take the others down. Knows nothing of Kubernetes.

use std::path::{Path, PathBuf};

use rustix::fs::{Access, AtFlags, Mode, OFlags, CWD};
use rustix::io::Errno;

use crate::handoff::DataDirCheck;
use ringmaster_ring::probe::errno::errno_name;

/// `DataDirCheck::reason` values (the same strings as `ringmaster_api::data_dir_reasons`).
pub mod reason {
    pub use ringmaster_api::data_dir_reasons::{NOT_A_DIRECTORY, NOT_FOUND, PERMISSION_DENIED};
}

/// Where the reader finds data dir `name` whose host path is `host`. Without a data root
/// the host path itself. With one (`reader --data-root`, in the pod) the operator mounts
/// the host path's parent at `<data-root>/<name>`, so the dir is
/// `<data-root>/<name>/<basename(host)>` (hostPath `/`: the mount itself).
pub fn serve_path(name: &str, host: &Path, data_root: Option<&Path>) -> PathBuf {
    match data_root {
        None => host.to_path_buf(),
        Some(root) => {
            let parent_mount = root.join(name);
            match host.file_name() {
                Some(base) => parent_mount.join(base),
                None => parent_mount,
            }
        }
    }
}

/// The reason for an errno from open/access of a data dir.
pub fn classify(e: Errno) -> String {
    match e {
        Errno::NOENT => reason::NOT_FOUND.into(),
        Errno::NOTDIR => reason::NOT_A_DIRECTORY.into(),
        Errno::ACCESS | Errno::PERM => reason::PERMISSION_DENIED.into(),
        other => errno_name(other.raw_os_error()),
    }
}

fn who() -> String {
    format!(
        "uid {}, gid {}",
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw()
    )
}

/// Check one dir: open it `O_RDONLY|O_DIRECTORY|O_NOFOLLOW` at `path` (where the reader
/// sees it; a symlink as the last component is refused, as the read service refuses it),
/// then ask for read and search permission with the effective ids. Messages name `host`.
pub fn check_one(name: &str, host: &Path, path: &Path) -> DataDirCheck {
    let opened = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .and_then(|_fd| {
        rustix::fs::accessat(
            CWD,
            path,
            Access::READ_OK | Access::EXEC_OK,
            AtFlags::EACCESS,
        )
    });
    let h = host.display();
    // O_DIRECTORY|O_NOFOLLOW answers ENOTDIR for a symlink: say which it is.
    let is_link = opened.is_err()
        && std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    match opened {
        Ok(()) => DataDirCheck {
            name: name.into(),
            path: host.to_path_buf(),
            available: true,
            reason: None,
            message: None,
        },
        Err(e) => {
            let reason = classify(e);
            let message = match reason.as_str() {
                reason::NOT_FOUND => format!("{h} does not exist"),
                _ if is_link => format!(
                    "{h} is a symbolic link: the reader never follows one at a data dir's last \
                     component; set hostPath to the directory it points to"
                ),
                reason::NOT_A_DIRECTORY => {
                    format!("{h} is not a directory (or a component of it is not)")
                }
                reason::PERMISSION_DENIED => format!(
                    "{h}: the reader ({}) may not open and search it ({})",
                    who(),
                    errno_name(e.raw_os_error())
                ),
                other => format!(
                    "{h}: cannot open it as the reader ({}): {other} ({e})",
                    who()
                ),
            };
            DataDirCheck {
                name: name.into(),
                path: host.to_path_buf(),
                available: false,
                reason: Some(reason),
                message: Some(message),
            }
        }
    }
}

/// Check every configured `(name, host path)`; returns the checks in config order and the
/// `(name, path to serve)` pairs of the usable ones.
pub fn check_all(
    dirs: &[(String, PathBuf)],
    data_root: Option<&Path>,
) -> (Vec<DataDirCheck>, Vec<(String, PathBuf)>) {
    let mut checks = Vec::with_capacity(dirs.len());
    let mut usable = Vec::new();
    for (name, host) in dirs {
        let path = serve_path(name, host, data_root);
        let c = check_one(name, host, &path);
        if c.available {
            usable.push((name.clone(), path));
        }
        checks.push(c);
    }
    (checks, usable)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Scratch(PathBuf);
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn scratch(tag: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!("rm-datadirs-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }

    #[test]
    fn data_root_maps_to_the_mounted_parent() {
        let root = Some(Path::new("/data-parents"));
        assert_eq!(
            serve_path("d1", Path::new("/storage/data1"), root),
            PathBuf::from("/data-parents/d1/data1")
        );
        assert_eq!(
            serve_path("d1", Path::new("/storage/data1/"), root),
            PathBuf::from("/data-parents/d1/data1")
        );
        assert_eq!(
            serve_path("all", Path::new("/"), root),
            PathBuf::from("/data-parents/all")
        );
        assert_eq!(
            serve_path("d1", Path::new("/storage/data1"), None),
            PathBuf::from("/storage/data1")
        );
    }

    #[test]
    fn real_dirs_files_and_missing_paths_are_told_apart() {
        let s = scratch("kinds");
        let ok = s.0.join("ok");
        std::fs::create_dir(&ok).unwrap();
        let file = s.0.join("file");
        std::fs::write(&file, b"x").unwrap();
        let dirs = vec![
            ("ok".to_string(), ok.clone()),
            ("gone".to_string(), s.0.join("gone")),
            ("file".to_string(), file.clone()),
            ("under-file".to_string(), file.join("x")),
        ];
        let (checks, usable) = check_all(&dirs, None);
        let reasons: Vec<Option<&str>> = checks.iter().map(|c| c.reason.as_deref()).collect();
        assert_eq!(
            reasons,
            [
                None,
                Some("NotFound"),
                Some("NotADirectory"),
                Some("NotADirectory")
            ]
        );
        assert_eq!(usable, vec![("ok".to_string(), ok)]);
        let gone = &checks[1];
        assert!(!gone.available);
        assert_eq!(gone.path, s.0.join("gone"));
        let m = gone.message.as_deref().unwrap();
        assert!(m.contains(&s.0.join("gone").display().to_string()), "{m}");
    }

    #[test]
    fn a_data_dir_whose_last_component_is_a_symlink_is_refused() {
        let s = scratch("link");
        let real = s.0.join("real");
        std::fs::create_dir(&real).unwrap();
        let link = s.0.join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        // A link above the last component is the host's layout, not ours to judge.
        let through = s.0.join("through");
        std::os::unix::fs::symlink(&s.0, &through).unwrap();
        let dirs = vec![
            ("link".to_string(), link.clone()),
            ("through".to_string(), through.join("real")),
        ];
        let (checks, usable) = check_all(&dirs, None);
        assert!(!checks[0].available, "{:?}", checks[0]);
        assert_eq!(checks[0].reason.as_deref(), Some("NotADirectory"));
        let m = checks[0].message.as_deref().unwrap();
        assert!(
            m.contains(&link.display().to_string()) && m.contains("symbolic link"),
            "{m}"
        );
        assert_eq!(usable, vec![("through".to_string(), through.join("real"))]);
    }

    #[test]
    fn messages_name_the_host_path_not_the_container_path() {
        let s = scratch("root");
        let parent = s.0.join("d1");
        std::fs::create_dir(&parent).unwrap();
        let host = Path::new("/storage/never-here/data1");
        let (checks, usable) = check_all(&[("d1".into(), host.into())], Some(&s.0));
        assert!(usable.is_empty());
        let m = checks[0].message.as_deref().unwrap();
        assert!(
            m.starts_with("/storage/never-here/data1 does not exist"),
            "{m}"
        );
        assert!(!m.contains(&s.0.display().to_string()), "{m}");
        // Created under the mounted parent: found at <root>/<name>/<basename>.
        std::fs::create_dir(parent.join("data1")).unwrap();
        let (checks, usable) = check_all(&[("d1".into(), host.into())], Some(&s.0));
        assert!(checks[0].available);
        assert_eq!(usable[0].1, parent.join("data1"));
    }

    #[test]
    fn a_dir_the_reader_uid_may_not_search_is_permission_denied() {
        use std::os::unix::fs::PermissionsExt;
        assert!(
            rustix::process::geteuid().is_root(),
            "this test drops one thread to uid 65534 and needs root to do so (tests run as root)"
        );
        let s = scratch("perm");
        let locked = s.0.join("locked");
        std::fs::create_dir(&locked).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o700)).unwrap();
        let host = locked.clone();
        // setresuid on one thread only (Linux credentials are per thread): that thread is
        // an unprivileged reader, with no capabilities left after leaving uid 0.
        let check = std::thread::spawn(move || {
            let nobody = rustix::process::Gid::from_raw(65534);
            rustix::thread::set_thread_res_gid(nobody, nobody, nobody).unwrap();
            let nobody = rustix::process::Uid::from_raw(65534);
            rustix::thread::set_thread_res_uid(nobody, nobody, nobody).unwrap();
            check_one("d0", &host, &host)
        })
        .join()
        .unwrap();
        assert!(!check.available);
        assert_eq!(check.reason.as_deref(), Some("PermissionDenied"));
        let m = check.message.unwrap();
        assert!(m.contains("uid 65534") && m.contains("EACCES"), "{m}");
        // Root (this thread) may: the same dir is available.
        assert!(check_one("d0", &locked, &locked).available);
    }

    #[test]
    fn errnos_classify() {
        assert_eq!(classify(Errno::NOENT), "NotFound");
        assert_eq!(classify(Errno::NOTDIR), "NotADirectory");
        assert_eq!(classify(Errno::ACCESS), "PermissionDenied");
        assert_eq!(classify(Errno::PERM), "PermissionDenied");
        assert_eq!(classify(Errno::LOOP), "ELOOP");
    }
}
