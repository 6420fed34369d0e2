//! Fuzz the request-head parser of the read port: never panics; an accepted head took a prefix
//! of the input ending in a blank line, its path is origin-form without a query, and no head
//! announcing a body is accepted. Each accepted head's answer head encodes to one well-formed
//! block (status line, fields, one blank line at the end).
#![no_main]

use libfuzzer_sys::fuzz_target;

use ringmaster_serve::http::{self, ContentRange, Persist, ReplyHead};

fuzz_target!(|input: &[u8]| {
    let Ok(Some((head, used))) = http::parse_head(input) else {
        return;
    };
    assert!(used <= input.len());
    assert!(input[..used].ends_with(b"\n\n") || input[..used].ends_with(b"\n\r\n"));
    assert!(head.path.starts_with('/') && !head.path.contains('?'), "{:?}", head.path);
    let lower = String::from_utf8_lossy(&input[..used]).to_ascii_lowercase();
    assert!(!lower.contains("\ntransfer-encoding:"), "a body was accepted");
    assert!(head.minor <= 1);
    if head.minor == 0 && head.keep_alive {
        assert!(lower.contains("keep-alive"));
    }
    let size = used as u64 * 1_000_003;
    let mut reply = ReplyHead::new(206, used as u64);
    reply.content_range = Some(ContentRange::Bytes {
        first: 0,
        last: used as u64,
        size,
    });
    reply.accept_ranges = head.range.is_some();
    let mut out = Vec::new();
    let persist = Persist::of(head.keep_alive, head.minor, false);
    http::encode_head(&mut out, &reply, "io_uring", &http::http_date(size), persist);
    assert!(out.starts_with(b"HTTP/1.1 206 "));
    assert_eq!(out.windows(4).filter(|w| w == b"\r\n\r\n").count(), 1);
    assert!(out.ends_with(b"\r\n\r\n"));
});
