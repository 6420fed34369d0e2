//! Bearer-token check of the read service: every route but the kubelet's probes and
//! `/metrics` needs `Authorization: Bearer <token>`, the token read from a file
//! (`--auth-token-file`; in a cluster the StorageCluster's read-token Secret, mounted into the
//! reader only). The file is read again every [`RELOAD_INTERVAL`], so a rotated Secret takes
//! effect without a restart. Tokens are compared in constant time.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use subtle::ConstantTimeEq;

/// How the read service decides who may read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Auth {
    /// Requests must carry `Authorization: Bearer <the file's content, trimmed>`.
    TokenFile(PathBuf),
    /// Anyone who reaches the port reads (`--allow-unauthenticated`: loopback tests and
    /// benchmarks only).
    Unauthenticated,
}

/// How often the token file is read again.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);
/// Shortest token accepted: anything shorter is guessable.
pub const MIN_TOKEN_LEN: usize = 16;
/// Largest token file read (a token is tens of bytes; this is a cap, not a format).
pub const MAX_TOKEN_FILE_BYTES: u64 = 4096;

/// Paths served without a token: the kubelet's probes (they cannot send one) and the
/// metrics (counters only: no file names, no data).
pub fn is_open_path(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
}

/// What the check found in a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// No `Authorization: Bearer` header.
    Missing,
    /// A bearer token that is not the one.
    Invalid,
}

impl Verdict {
    /// The `reason` label of `ringmaster_requests_unauthorized_total`.
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Allowed => "allowed",
            Verdict::Missing => "missing",
            Verdict::Invalid => "invalid",
        }
    }

    /// `WWW-Authenticate` of the 401 (RFC 6750 §3).
    pub fn challenge(self) -> &'static str {
        match self {
            Verdict::Invalid => r#"Bearer realm="ringmaster", error="invalid_token""#,
            _ => r#"Bearer realm="ringmaster""#,
        }
    }
}

/// Checks an `Authorization` header against `token`. The scheme is case-insensitive
/// (RFC 7235); the token comparison takes the same time wherever the first difference is.
pub fn check(header: Option<&[u8]>, token: &[u8]) -> Verdict {
    let Some(v) = header else {
        return Verdict::Missing;
    };
    let Some((scheme, rest)) = v.iter().position(|&b| b == b' ').map(|i| v.split_at(i)) else {
        return Verdict::Missing;
    };
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Verdict::Missing;
    }
    let given = rest.trim_ascii();
    if bool::from(given.ct_eq(token)) {
        Verdict::Allowed
    } else {
        Verdict::Invalid
    }
}

/// Parses a token file's content: trimmed, at least [`MIN_TOKEN_LEN`] bytes, visible ASCII
/// (it travels in an HTTP header). Err says what is wrong, for a message naming the file.
pub fn parse_token(raw: &[u8]) -> Result<Vec<u8>, String> {
    let t = raw.trim_ascii();
    if t.is_empty() {
        return Err("the file is empty".into());
    }
    if let Some(b) = t.iter().find(|b| !b.is_ascii_graphic()) {
        return Err(format!(
            "the token holds byte 0x{b:02x}: only visible ASCII can be sent in a header"
        ));
    }
    if t.len() < MIN_TOKEN_LEN {
        return Err(format!(
            "the token is {} bytes, fewer than {MIN_TOKEN_LEN}: use a random one, e.g. \
             `openssl rand -hex 32`",
            t.len()
        ));
    }
    Ok(t.to_vec())
}

/// Reads and parses the token file (follows symlinks: a mounted Secret's files are links
/// into its current `..data` dir). Errors name the flag and the file.
pub fn read_token_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let what = || format!("--auth-token-file {}", path.display());
    let f = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{}: {e}", what()))?;
    let mut raw = Vec::new();
    f.take(MAX_TOKEN_FILE_BYTES + 1)
        .read_to_end(&mut raw)
        .map_err(|e| anyhow::anyhow!("{}: {e}", what()))?;
    if raw.len() as u64 > MAX_TOKEN_FILE_BYTES {
        anyhow::bail!(
            "{}: over {MAX_TOKEN_FILE_BYTES} bytes: not a token file",
            what()
        );
    }
    parse_token(&raw).map_err(|e| anyhow::anyhow!("{}: {e}", what()))
}

/// The token in force, replaced when the file changes.
pub struct TokenFile {
    path: PathBuf,
    current: RwLock<Arc<[u8]>>,
}

impl TokenFile {
    /// Reads the file once; a missing, empty or malformed file is an error (never serve
    /// with no token).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let t = read_token_file(path)?;
        Ok(TokenFile {
            path: path.to_path_buf(),
            current: RwLock::new(t.into()),
        })
    }

    pub fn check(&self, header: Option<&[u8]>) -> Verdict {
        let t = self.current.read().unwrap_or_else(|e| e.into_inner());
        check(header, &t)
    }

    /// Reads the file again: Ok(true) when the token changed. A file that became
    /// unreadable or malformed keeps the current token (Err says why): a Secret being
    /// swapped must not open the service, nor lock everyone out.
    pub fn reload(&self) -> anyhow::Result<bool> {
        let t = read_token_file(&self.path)?;
        let mut cur = self.current.write().unwrap_or_else(|e| e.into_inner());
        if *cur.as_ref() == *t.as_slice() {
            return Ok(false);
        }
        *cur = t.into();
        Ok(true)
    }

    /// Reloads every [`RELOAD_INTERVAL`] until the task is aborted.
    pub fn spawn_reloader(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut last_error: Option<String> = None;
            loop {
                tokio::time::sleep(RELOAD_INTERVAL).await;
                let me = self.clone();
                match tokio::task::spawn_blocking(move || me.reload()).await {
                    Ok(Ok(true)) => {
                        last_error = None;
                        tracing::info!(file = %self.path.display(), "auth token changed: now in force");
                    }
                    Ok(Ok(false)) => last_error = None,
                    Ok(Err(e)) => {
                        let msg = format!("{e:#}");
                        if last_error.as_ref() != Some(&msg) {
                            tracing::warn!(error = %msg, "cannot read the auth token file: keeping the current token");
                            last_error = Some(msg);
                        }
                    }
                    Err(_) => {}
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn h(s: &str) -> &[u8] {
        s.as_bytes()
    }

    #[test]
    fn only_the_exact_bearer_token_is_allowed() {
        let tok = std::str::from_utf8(T).unwrap();
        assert_eq!(
            check(Some(h(&format!("Bearer {tok}"))), T),
            Verdict::Allowed
        );
        assert_eq!(
            check(Some(h(&format!("bearer  {tok} "))), T),
            Verdict::Allowed
        );
        assert_eq!(check(None, T), Verdict::Missing);
        assert_eq!(check(Some(h(&format!("Basic {tok}"))), T), Verdict::Missing);
        assert_eq!(check(Some(h("Bearer")), T), Verdict::Missing);
        assert_eq!(check(Some(h("Bearer ")), T), Verdict::Invalid);
        let mut wrong = T.to_vec();
        *wrong.last_mut().unwrap() ^= 1;
        let wrong = String::from_utf8(wrong).unwrap();
        assert_eq!(
            check(Some(h(&format!("Bearer {wrong}"))), T),
            Verdict::Invalid
        );
        // A prefix or an extension of the token is not the token.
        assert_eq!(
            check(Some(h(&format!("Bearer {}", &tok[..31]))), T),
            Verdict::Invalid
        );
        assert_eq!(
            check(Some(h(&format!("Bearer {tok}x"))), T),
            Verdict::Invalid
        );
    }

    #[test]
    fn challenge_says_invalid_token_only_for_a_wrong_one() {
        assert!(Verdict::Invalid.challenge().contains("invalid_token"));
        assert!(Verdict::Missing.challenge().starts_with("Bearer "));
        assert!(!Verdict::Missing.challenge().contains("error="));
    }

    #[test]
    fn token_files_are_trimmed_and_weak_ones_refused() {
        assert_eq!(
            parse_token(b"  0123456789abcdef\n").unwrap(),
            b"0123456789abcdef"
        );
        assert!(parse_token(b"\n").unwrap_err().contains("empty"));
        assert!(parse_token(b"short").unwrap_err().contains("fewer than 16"));
        assert!(parse_token(b"0123456789 abcdef")
            .unwrap_err()
            .contains("0x20"));
    }

    #[test]
    fn probes_and_metrics_are_the_only_open_paths() {
        for p in ["/healthz", "/readyz", "/metrics"] {
            assert!(is_open_path(p), "{p}");
        }
        for p in ["/v1/files/d/x", "/", "/healthz/", "/metrics/x", "/other"] {
            assert!(!is_open_path(p), "{p}");
        }
    }
}
