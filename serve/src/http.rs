//! The pure half of the read port's HTTP/1.1: a request head (bytes → [`Head`], with `httparse`)
//! and a response head ([`ReplyHead`] → bytes). No I/O here; `conn` does the sockets.
//!
//! What a request may be: `GET` or `HEAD` (others get 405), an origin-form target (`/...`; the
//! query is dropped), no body (`Transfer-Encoding`, or `Content-Length` other than 0, get 400
//! and the connection closed: the service reads no bodies, so none can be smuggled), a head of
//! at most [`HEAD_BUF`] bytes with at most [`MAX_HEADERS`] fields (431 otherwise).

/// Bytes a request head may take (the connection's read buffer).
pub const HEAD_BUF: usize = 8 << 10;
/// Header fields a request head may carry.
pub const MAX_HEADERS: usize = 48;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    /// Anything else: answered 405.
    Other,
}

/// A parsed request head; borrows the connection's buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Head<'a> {
    pub method: Method,
    /// The target's path, without `?query`.
    pub path: &'a str,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    /// The connection stays open after the answer (HTTP/1.1 unless `Connection: close`;
    /// HTTP/1.0 only with `Connection: keep-alive`).
    pub keep_alive: bool,
    /// The first `Range` field's value.
    pub range: Option<&'a [u8]>,
    /// The first `Authorization` field's value.
    pub authorization: Option<&'a [u8]>,
}

/// Why a head cannot be served; each is answered and the connection closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadError {
    /// Malformed (httparse refused it, or a target not in origin form).
    Malformed,
    /// More than [`MAX_HEADERS`] fields (431).
    TooManyHeaders,
    /// A request body announced (`Transfer-Encoding`, `Content-Length` > 0 or unparsable).
    Body,
    /// No complete head within [`HEAD_BUF`] bytes (431).
    TooLarge,
}

impl HeadError {
    pub fn status(self) -> u16 {
        match self {
            HeadError::TooManyHeaders | HeadError::TooLarge => 431,
            _ => 400,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            HeadError::Malformed => "malformed request head\n",
            HeadError::TooManyHeaders => "too many header fields\n",
            HeadError::TooLarge => "request head over 8 KiB\n",
            HeadError::Body => {
                "request bodies are not accepted (Transfer-Encoding or Content-Length > 0)\n"
            }
        }
    }
}

/// `Connection` holds `token` among its comma-separated options (case-insensitive).
fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// One request head from the start of `buf`: `Ok(None)` while it is incomplete, else the head
/// and the bytes it took (the next request, if pipelined, starts there).
pub fn parse_head(buf: &[u8]) -> Result<Option<(Head<'_>, usize)>, HeadError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(_) => return Err(HeadError::Malformed),
    };
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(HeadError::Malformed);
    };
    if !target.starts_with('/') {
        return Err(HeadError::Malformed);
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let method = match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        _ => Method::Other,
    };
    let (mut close, mut keep) = (false, false);
    let (mut range, mut authorization) = (None, None);
    let mut length: Option<&[u8]> = None;
    for f in req.headers.iter() {
        let name = f.name.as_bytes();
        if name.eq_ignore_ascii_case(b"range") {
            range = range.or(Some(f.value));
        } else if name.eq_ignore_ascii_case(b"authorization") {
            authorization = authorization.or(Some(f.value));
        } else if name.eq_ignore_ascii_case(b"connection") {
            close |= has_token(f.value, b"close");
            keep |= has_token(f.value, b"keep-alive");
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            return Err(HeadError::Body);
        } else if name.eq_ignore_ascii_case(b"content-length") {
            // Only a single 0 is no body; two fields, even equal, are refused.
            if length.is_some() || f.value.trim_ascii() != b"0" {
                return Err(HeadError::Body);
            }
            length = Some(f.value);
        }
    }
    let keep_alive = !close && (minor == 1 || keep);
    Ok(Some((
        Head {
            method,
            path,
            minor,
            keep_alive,
            range,
            authorization,
        },
        len,
    )))
}

/// What a response's `Content-Range` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentRange {
    /// `bytes first-last/size` (206).
    Bytes { first: u64, last: u64, size: u64 },
    /// `bytes */size` (416).
    Unsatisfied { size: u64 },
}

/// The header fields of a response (beside the ones every response carries).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyHead {
    pub status: u16,
    pub content_length: u64,
    pub content_type: Option<&'static str>,
    pub content_range: Option<ContentRange>,
    pub accept_ranges: bool,
    /// `Retry-After: 1` (503).
    pub retry_after: bool,
    pub www_authenticate: Option<&'static str>,
    /// `Allow: GET, HEAD` (405).
    pub allow: bool,
}

impl ReplyHead {
    pub fn new(status: u16, content_length: u64) -> Self {
        ReplyHead {
            status,
            content_length,
            content_type: None,
            content_range: None,
            accept_ranges: false,
            retry_after: false,
            www_authenticate: None,
            allow: false,
        }
    }
}

/// How the `Connection` field of an answer reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persist {
    /// HTTP/1.1 kept open: no field.
    KeepAlive11,
    /// HTTP/1.0 kept open: `Connection: keep-alive`.
    KeepAlive10,
    /// `Connection: close`.
    Close,
}

impl Persist {
    pub fn of(head_keep_alive: bool, minor: u8, closing: bool) -> Self {
        match (head_keep_alive && !closing, minor) {
            (false, _) => Persist::Close,
            (true, 0) => Persist::KeepAlive10,
            (true, _) => Persist::KeepAlive11,
        }
    }

    pub fn keeps_open(self) -> bool {
        self != Persist::Close
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        416 => "Range Not Satisfiable",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

fn push_num(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Appends the response head to `out` (cleared first): status line, `h`, the worker mode,
/// `date` (an IMF-fixdate) and the connection's fate, then the blank line.
pub fn encode_head(out: &mut Vec<u8>, h: &ReplyHead, mode: &str, date: &[u8], persist: Persist) {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    push_num(out, h.status);
    out.push(b' ');
    out.extend_from_slice(reason(h.status).as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(t) = h.content_type {
        out.extend_from_slice(b"content-type: ");
        out.extend_from_slice(t.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"content-length: ");
    push_num(out, h.content_length);
    out.extend_from_slice(b"\r\n");
    match h.content_range {
        Some(ContentRange::Bytes { first, last, size }) => {
            out.extend_from_slice(b"content-range: bytes ");
            push_num(out, first);
            out.push(b'-');
            push_num(out, last);
            out.push(b'/');
            push_num(out, size);
            out.extend_from_slice(b"\r\n");
        }
        Some(ContentRange::Unsatisfied { size }) => {
            out.extend_from_slice(b"content-range: bytes */");
            push_num(out, size);
            out.extend_from_slice(b"\r\n");
        }
        None => {}
    }
    if h.accept_ranges {
        out.extend_from_slice(b"accept-ranges: bytes\r\n");
    }
    if h.retry_after {
        out.extend_from_slice(b"retry-after: 1\r\n");
    }
    if let Some(c) = h.www_authenticate {
        out.extend_from_slice(b"www-authenticate: ");
        out.extend_from_slice(c.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if h.allow {
        out.extend_from_slice(b"allow: GET, HEAD\r\n");
    }
    out.extend_from_slice(crate::MODE_HEADER.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(mode.as_bytes());
    out.extend_from_slice(b"\r\ndate: ");
    out.extend_from_slice(date);
    out.extend_from_slice(b"\r\n");
    match persist {
        Persist::KeepAlive11 => {}
        Persist::KeepAlive10 => out.extend_from_slice(b"connection: keep-alive\r\n"),
        Persist::Close => out.extend_from_slice(b"connection: close\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// `Date` field value of the Unix second `secs` (IMF-fixdate, `Sun, 06 Nov 1994 08:49:37 GMT`,
/// always 29 bytes for years 1970–9999).
pub fn http_date(secs: u64) -> [u8; 29] {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    let mut out = *b"Thu, 01 Jan 1970 00:00:00 GMT";
    out.copy_from_slice(httpdate::fmt_http_date(at).as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Option<(Head<'_>, usize)>, HeadError> {
        parse_head(s.as_bytes())
    }

    #[test]
    fn a_get_with_range_and_query() {
        let raw = "GET /v1/files/d/a%20b?x=1&y HTTP/1.1\r\nHost: h\r\nrange: bytes=0-9\r\nRange: bytes=5-6\r\nAuthorization: Bearer t\r\n\r\nGET /next";
        let (h, n) = parse(raw).unwrap().unwrap();
        assert_eq!(
            &raw[n..],
            "GET /next",
            "the pipelined request starts after the head"
        );
        assert_eq!(
            h,
            Head {
                method: Method::Get,
                path: "/v1/files/d/a%20b",
                minor: 1,
                keep_alive: true,
                range: Some(b"bytes=0-9"),
                authorization: Some(b"Bearer t"),
            }
        );
    }

    #[test]
    fn incomplete_heads_wait_for_more() {
        for raw in [
            "",
            "GE",
            "GET / HTTP/1.1\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\n",
        ] {
            assert_eq!(parse(raw), Ok(None), "{raw:?}");
        }
    }

    #[test]
    fn keep_alive_by_version_and_connection() {
        let ka = |raw: &str| parse(raw).unwrap().unwrap().0.keep_alive;
        assert!(ka("GET / HTTP/1.1\r\n\r\n"));
        assert!(!ka("GET / HTTP/1.1\r\nConnection: close\r\n\r\n"));
        assert!(!ka("GET / HTTP/1.1\r\nConnection: Upgrade, CLOSE\r\n\r\n"));
        assert!(!ka("GET / HTTP/1.0\r\n\r\n"));
        assert!(ka("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
        assert!(!ka(
            "GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n"
        ));
        assert_eq!(Persist::of(true, 1, false), Persist::KeepAlive11);
        assert_eq!(Persist::of(true, 0, false), Persist::KeepAlive10);
        assert_eq!(Persist::of(true, 1, true), Persist::Close);
        assert_eq!(Persist::of(false, 1, false), Persist::Close);
    }

    #[test]
    fn methods_bodies_and_malformed_heads() {
        let m = |raw: &str| parse(raw).unwrap().unwrap().0.method;
        assert_eq!(m("HEAD / HTTP/1.1\r\n\r\n"), Method::Head);
        assert_eq!(m("POST / HTTP/1.1\r\n\r\n"), Method::Other);
        assert_eq!(
            m("get / HTTP/1.1\r\n\r\n"),
            Method::Other,
            "methods are case-sensitive"
        );
        assert!(parse("GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").is_ok());
        for raw in [
            "POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
            "GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
            "GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
        ] {
            assert_eq!(parse(raw), Err(HeadError::Body), "{raw:?}");
        }
        for raw in [
            "GET http://h/x HTTP/1.1\r\n\r\n",
            "GET * HTTP/1.1\r\n\r\n",
            "GET / HTTP/2.0\r\n\r\n",
            "GET /\0 HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
        ] {
            assert_eq!(parse(raw), Err(HeadError::Malformed), "{raw:?}");
        }
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("X-{i}: y\r\n"))
            .collect();
        assert_eq!(
            parse(&format!("GET / HTTP/1.1\r\n{many}\r\n")),
            Err(HeadError::TooManyHeaders)
        );
        assert_eq!(HeadError::TooManyHeaders.status(), 431);
    }

    #[test]
    fn response_heads() {
        let mut out = Vec::new();
        let mut h = ReplyHead::new(206, 10);
        h.content_type = Some("application/octet-stream");
        h.content_range = Some(ContentRange::Bytes {
            first: 5,
            last: 14,
            size: 1 << 40,
        });
        h.accept_ranges = true;
        let date = http_date(784_111_777);
        encode_head(&mut out, &h, "io_uring", &date, Persist::KeepAlive11);
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "HTTP/1.1 206 Partial Content\r\ncontent-type: application/octet-stream\r\n\
             content-length: 10\r\ncontent-range: bytes 5-14/1099511627776\r\n\
             accept-ranges: bytes\r\nx-ringmaster-worker-mode: io_uring\r\n\
             date: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\n"
        );
        let mut h = ReplyHead::new(416, 0);
        h.content_range = Some(ContentRange::Unsatisfied { size: 7 });
        encode_head(&mut out, &h, "pread", &date, Persist::Close);
        let s = String::from_utf8(out.clone()).unwrap();
        assert!(
            s.starts_with("HTTP/1.1 416 Range Not Satisfiable\r\n"),
            "{s}"
        );
        assert!(s.contains("\r\ncontent-range: bytes */7\r\n"), "{s}");
        assert!(s.ends_with("\r\nconnection: close\r\n\r\n"), "{s}");
        let mut h = ReplyHead::new(405, 0);
        h.allow = true;
        encode_head(&mut out, &h, "pread", &date, Persist::KeepAlive10);
        let s = String::from_utf8(out).unwrap();
        assert!(s.contains("\r\nallow: GET, HEAD\r\n"), "{s}");
        assert!(s.contains("\r\nconnection: keep-alive\r\n"), "{s}");
    }

    #[test]
    fn dates() {
        assert_eq!(&http_date(0), b"Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(&http_date(951_825_600), b"Tue, 29 Feb 2000 12:00:00 GMT");
        assert_eq!(&http_date(1_798_761_599), b"Thu, 31 Dec 2026 23:59:59 GMT");
    }
}
