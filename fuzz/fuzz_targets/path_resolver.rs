//! Fuzz the request-path check: never panics, and nothing it accepts can climb out of the data
//! dir lexically (no `..`/`.` segment, not absolute, no NUL, no backslash, no empty segment).
#![no_main]

use libfuzzer_sys::fuzz_target;

use ringmaster_serve::paths;

fuzz_target!(|path: &str| {
    if let Ok(p) = paths::check_relative(path) {
        assert_eq!(p, path);
        assert!(!p.starts_with('/') && !p.contains('\0') && !p.contains('\\'), "{p:?}");
        let joined = std::path::Path::new("/data").join(p);
        assert!(joined.starts_with("/data"), "{p:?} escapes: {}", joined.display());
        for c in std::path::Path::new(p).components() {
            assert!(
                matches!(c, std::path::Component::Normal(_)),
                "{p:?} has a non-normal component {c:?}"
            );
        }
        assert!(p.split('/').all(|s| !s.is_empty() && s != "." && s != ".."), "{p:?}");
    }
});
