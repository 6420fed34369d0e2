//! The read service's bearer-token check, in-process over a real listener: reads without the
//! token or with a wrong one get 401 (counted in /metrics), the right one reads the right bytes,
//! the probes and /metrics stay open, a rotated token file takes effect without a restart, and
//! a data dir root that is a symlink is refused at start.

#[path = "../../ring/tests/io_support/mod.rs"]
mod io_support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use io_support::{http_get, pattern, HttpResponse, TempDir};
use ringmaster_serve::{self as serve, Auth, ServeConfig, ServeHandle};

const TOKEN_A: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
const TOKEN_B: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

/// A token laid out as the kubelet mounts a Secret: `token` -> `..data/token`, `..data` a
/// symlink to a timestamped dir, swapped atomically on an update.
struct SecretDir {
    dir: PathBuf,
    generation: u32,
}

impl SecretDir {
    fn new(dir: &Path, token: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let mut s = SecretDir {
            dir: dir.to_path_buf(),
            generation: 0,
        };
        s.write(token);
        std::os::unix::fs::symlink("..data/token", dir.join("token")).unwrap();
        s
    }

    fn write(&mut self, token: &str) {
        self.generation += 1;
        let ts = format!("..2026_{}", self.generation);
        std::fs::create_dir(self.dir.join(&ts)).unwrap();
        std::fs::write(self.dir.join(&ts).join("token"), token).unwrap();
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&ts, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
    }

    fn token_file(&self) -> PathBuf {
        self.dir.join("token")
    }
}

fn data(dir: &TempDir) -> (PathBuf, Vec<u8>) {
    let d = dir.path().join("data");
    std::fs::create_dir_all(&d).unwrap();
    let bytes = pattern(10_000, 7);
    std::fs::write(d.join("blob"), &bytes).unwrap();
    (d, bytes)
}

async fn start(data_dir: PathBuf, auth: Auth) -> ServeHandle {
    let cfg = ServeConfig::new(
        vec![("d".into(), data_dir)],
        "127.0.0.1:0".parse::<SocketAddr>().unwrap(),
        auth,
    );
    serve::start(cfg).await.expect("serve starts")
}

async fn get(addr: SocketAddr, target: &str, extra: &[(&str, &str)]) -> HttpResponse {
    let t = target.to_string();
    let e: Vec<(String, String)> = extra
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let e: Vec<(&str, &str)> = e.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        http_get(addr, &t, &e).unwrap_or_else(|err| panic!("GET {t}: {err}"))
    })
    .await
    .unwrap()
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

/// The value of one sample line in the metrics text.
fn sample(metrics: &str, series: &str) -> Option<u64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_need_the_bearer_token_and_refusals_are_counted() {
    let dir = TempDir::new("serve-auth");
    let (data_dir, bytes) = data(&dir);
    let secret = SecretDir::new(&dir.path().join("secret"), &format!("{TOKEN_A}\n"));
    let h = start(data_dir, Auth::TokenFile(secret.token_file())).await;
    let addr = h.local_addr();
    let range = ("Range", "bytes=100-199");

    // No token: 401 with a Bearer challenge, no data.
    let r = get(addr, "/v1/files/d/blob", &[range]).await;
    assert_eq!(r.status, 401, "{}", r.text());
    let challenge = r.header("www-authenticate").unwrap_or_default();
    assert!(challenge.starts_with("Bearer "), "{challenge:?}");
    assert!(!challenge.contains("invalid_token"), "{challenge:?}");
    assert!(!r.body.windows(100).any(|w| w == &bytes[100..200]));
    // Another scheme is no token either.
    let r = get(
        addr,
        "/v1/files/d/blob",
        &[range, ("Authorization", &format!("Basic {TOKEN_A}"))],
    )
    .await;
    assert_eq!(r.status, 401);

    // A wrong token (one character off, and the other cluster's): 401 invalid_token.
    let mut off = TOKEN_A.to_string();
    off.replace_range(63.., "1");
    for wrong in [off.as_str(), TOKEN_B] {
        let r = get(
            addr,
            "/v1/files/d/blob",
            &[range, ("Authorization", &bearer(wrong))],
        )
        .await;
        assert_eq!(r.status, 401, "{wrong}: {}", r.text());
        let challenge = r.header("www-authenticate").unwrap_or_default();
        assert!(
            challenge.contains("error=\"invalid_token\""),
            "{challenge:?}"
        );
    }

    // Routes that are not reads are closed too (401, not 404: nothing is told without a token).
    assert_eq!(get(addr, "/v1/files/d/nope", &[]).await.status, 401);
    assert_eq!(get(addr, "/other", &[]).await.status, 401);

    // The right token: 206 and the right bytes; the trailing newline of the file is no part of it.
    let r = get(
        addr,
        "/v1/files/d/blob",
        &[range, ("Authorization", &bearer(TOKEN_A))],
    )
    .await;
    assert_eq!(r.status, 206, "{}", r.text());
    assert_eq!(&r.body[..], &bytes[100..200]);
    assert_eq!(
        get(
            addr,
            "/v1/files/d/nope",
            &[("Authorization", &bearer(TOKEN_A))]
        )
        .await
        .status,
        404
    );

    // The kubelet's probes and the metrics need no token.
    assert_eq!(get(addr, "/healthz", &[]).await.status, 200);
    assert_eq!(get(addr, "/readyz", &[]).await.status, 200);
    let m = get(addr, "/metrics", &[]).await;
    assert_eq!(m.status, 200);
    let m = m.text();
    let missing = r#"ringmaster_requests_unauthorized_total{reason="missing"}"#;
    let invalid = r#"ringmaster_requests_unauthorized_total{reason="invalid"}"#;
    assert_eq!(sample(&m, missing), Some(4), "{m}");
    assert_eq!(sample(&m, invalid), Some(2), "{m}");
    // Refused file reads also count among the reads by status: 5 of the 6 refusals
    // (/other is no read).
    assert_eq!(
        sample(&m, r#"ringmaster_reads_total{status="401"}"#),
        Some(5),
        "{m}"
    );
    assert_eq!(
        sample(&m, r#"ringmaster_reads_total{status="206"}"#),
        Some(1),
        "{m}"
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_token_file_takes_effect_without_a_restart() {
    let dir = TempDir::new("serve-auth-rotate");
    let (data_dir, bytes) = data(&dir);
    let mut secret = SecretDir::new(&dir.path().join("secret"), TOKEN_A);
    let h = start(data_dir, Auth::TokenFile(secret.token_file())).await;
    let addr = h.local_addr();
    let read = |t: &'static str| async move {
        get(
            addr,
            "/v1/files/d/blob",
            &[("Range", "bytes=0-9"), ("Authorization", &bearer(t))],
        )
        .await
    };
    assert_eq!(read(TOKEN_A).await.status, 206);
    assert_eq!(read(TOKEN_B).await.status, 401);

    // The Secret is updated the way the kubelet does it (the ..data link swapped).
    secret.write(TOKEN_B);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = read(TOKEN_B).await;
        if r.status == 206 {
            assert_eq!(&r.body[..], &bytes[..10]);
            break;
        }
        assert_eq!(r.status, 401, "{}", r.text());
        assert!(Instant::now() < deadline, "the new token never took effect");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(read(TOKEN_A).await.status, 401, "the old token still reads");

    // A file that turns empty (a Secret being swapped badly) keeps the token in force:
    // the service neither opens up nor locks everyone out.
    secret.write("");
    tokio::time::sleep(serve::auth::RELOAD_INTERVAL * 3).await;
    assert_eq!(read(TOKEN_B).await.status, 206);
    let r = get(
        addr,
        "/v1/files/d/blob",
        &[("Range", "bytes=0-9"), ("Authorization", "Bearer ")],
    )
    .await;
    assert_eq!(r.status, 401);
    h.shutdown().await;
}

#[tokio::test]
async fn a_missing_empty_or_weak_token_file_refuses_to_start_naming_the_flag() {
    let dir = TempDir::new("serve-auth-bad");
    let (data_dir, _) = data(&dir);
    let cases = [
        ("missing", None, "No such file"),
        ("empty", Some("\n"), "empty"),
        ("weak", Some("secret"), "fewer than 16"),
    ];
    for (name, content, want) in cases {
        let f = dir.path().join(name);
        if let Some(c) = content {
            std::fs::write(&f, c).unwrap();
        }
        let cfg = ServeConfig::new(
            vec![("d".into(), data_dir.clone())],
            "127.0.0.1:0".parse().unwrap(),
            Auth::TokenFile(f.clone()),
        );
        let e = format!("{:#}", serve::start(cfg).await.err().expect(name));
        assert!(
            e.contains(&format!("--auth-token-file {}", f.display())) && e.contains(want),
            "{name}: {e}"
        );
    }
}

#[tokio::test]
async fn a_data_dir_root_that_is_a_symlink_is_refused() {
    let dir = TempDir::new("serve-root-link");
    let (data_dir, _) = data(&dir);
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&data_dir, &link).unwrap();
    let cfg = ServeConfig::new(
        vec![("d".into(), link.clone())],
        "127.0.0.1:0".parse().unwrap(),
        Auth::Unauthenticated,
    );
    let e = format!("{:#}", serve::start(cfg).await.err().expect("refused"));
    assert!(
        e.contains(&format!("--data-dir d={}", link.display())) && e.contains("symbolic link"),
        "{e}"
    );
    // A link above the last component is followed (the host's layout): the same dir served
    // through link/.. is fine.
    let through = link.join("..").join("data");
    let cfg = ServeConfig::new(
        vec![("d".into(), through)],
        "127.0.0.1:0".parse().unwrap(),
        Auth::Unauthenticated,
    );
    serve::start(cfg).await.expect("serves").shutdown().await;
}
