//! Fuzz the `Range` header parser: never panics, and every accepted range resolves inside the file.
#![no_main]

use libfuzzer_sys::fuzz_target;

use ringmaster_serve::range;

fuzz_target!(|input: (&str, u64)| {
    let (header, size) = input;
    let Ok(spec) = range::parse_range(header) else {
        return;
    };
    assert!(header.contains('='), "accepted {header:?} without '='");
    assert!(!header.contains(','), "accepted a multi-range {header:?}");
    if let range::RangeSpec::FromTo(a, b) = spec {
        assert!(a <= b, "accepted a reversed range {header:?}");
    }
    if let Some((first, last)) = range::resolve(spec, size) {
        assert!(first <= last && last < size, "{header:?} on {size} bytes -> {first}-{last}");
    }
});
