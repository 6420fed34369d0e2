//! `Range: bytes=...` parsing (RFC 9110 §14.1.2), one range only. Depends on std alone so the
//! fuzz target can include this file directly.

/// One byte range as written in the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSpec {
    /// `bytes=a-b` (inclusive).
    FromTo(u64, u64),
    /// `bytes=a-`
    From(u64),
    /// `bytes=-n`: the last n bytes.
    Suffix(u64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeError {
    /// Not `bytes=a-b`, `bytes=a-` or `bytes=-n` (400).
    Malformed(&'static str),
    /// More than one range (400: not supported).
    Multiple,
}

impl std::fmt::Display for RangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RangeError::Malformed(why) => write!(
                f,
                "malformed Range header ({why}): use 'bytes=FIRST-LAST', 'bytes=FIRST-' or 'bytes=-SUFFIX'"
            ),
            RangeError::Multiple => {
                f.write_str("multiple ranges are not supported: request one 'bytes=FIRST-LAST'")
            }
        }
    }
}

fn digits(s: &str) -> Result<u64, RangeError> {
    if s.is_empty() {
        return Err(RangeError::Malformed("missing number"));
    }
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RangeError::Malformed("not a decimal number"));
    }
    s.parse()
        .map_err(|_| RangeError::Malformed("number too large"))
}

/// Parse the header value.
pub fn parse_range(value: &str) -> Result<RangeSpec, RangeError> {
    let v = value.trim_matches(|c| c == ' ' || c == '\t');
    let (unit, set) = v
        .split_once('=')
        .ok_or(RangeError::Malformed("missing '='"))?;
    if !unit.trim_end().eq_ignore_ascii_case("bytes") {
        return Err(RangeError::Malformed("unit is not 'bytes'"));
    }
    let set = set.trim_matches(|c| c == ' ' || c == '\t');
    if set.contains(',') {
        return Err(RangeError::Multiple);
    }
    let (first, last) = set
        .split_once('-')
        .ok_or(RangeError::Malformed("missing '-'"))?;
    match (first.is_empty(), last.is_empty()) {
        (true, true) => Err(RangeError::Malformed("empty range")),
        (true, false) => Ok(RangeSpec::Suffix(digits(last)?)),
        (false, true) => Ok(RangeSpec::From(digits(first)?)),
        (false, false) => {
            let (a, b) = (digits(first)?, digits(last)?);
            if a > b {
                return Err(RangeError::Malformed("first byte after last byte"));
            }
            Ok(RangeSpec::FromTo(a, b))
        }
    }
}

/// The inclusive byte span `(first, last)` of `spec` in a file of `size` bytes, or `None` when
/// unsatisfiable (416).
pub fn resolve(spec: RangeSpec, size: u64) -> Option<(u64, u64)> {
    if size == 0 {
        return None;
    }
    match spec {
        RangeSpec::FromTo(a, b) if a < size => Some((a, b.min(size - 1))),
        RangeSpec::From(a) if a < size => Some((a, size - 1)),
        RangeSpec::Suffix(n) if n > 0 => Some((size - n.min(size), size - 1)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms() {
        assert_eq!(parse_range("bytes=0-99"), Ok(RangeSpec::FromTo(0, 99)));
        assert_eq!(parse_range(" Bytes = 5- "), Ok(RangeSpec::From(5)));
        assert_eq!(parse_range("bytes=-7"), Ok(RangeSpec::Suffix(7)));
    }

    #[test]
    fn rejects_bad_headers() {
        for bad in [
            "",
            "bytes",
            "bytes=",
            "bytes=-",
            "items=0-1",
            "bytes=5-1",
            "bytes=a-1",
            "bytes=+1-2",
            "bytes=1-2-3",
            "bytes=99999999999999999999-",
        ] {
            assert!(
                matches!(parse_range(bad), Err(RangeError::Malformed(_))),
                "{bad:?}"
            );
        }
        assert_eq!(parse_range("bytes=0-1,3-4"), Err(RangeError::Multiple));
    }

    #[test]
    fn resolves_against_size() {
        assert_eq!(resolve(RangeSpec::FromTo(0, 99), 10), Some((0, 9)));
        assert_eq!(resolve(RangeSpec::FromTo(10, 99), 10), None);
        assert_eq!(resolve(RangeSpec::From(9), 10), Some((9, 9)));
        assert_eq!(resolve(RangeSpec::Suffix(3), 10), Some((7, 9)));
        assert_eq!(resolve(RangeSpec::Suffix(30), 10), Some((0, 9)));
        assert_eq!(resolve(RangeSpec::Suffix(0), 10), None);
        assert_eq!(resolve(RangeSpec::From(0), 0), None);
    }
}
