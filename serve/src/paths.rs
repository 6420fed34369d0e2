//! Confining a request path to a data dir. Two layers: a lexical check (400 for `..`, `.`,
//! absolute paths, empty segments, NUL; the URL is already percent-decoded, so `%2e%2e` arrives
//! here as `..`), then `openat2(RESOLVE_BENEATH)` from the data dir's fd so no symlink, even one
//! swapped in after the check, can leave the dir. The lexical part depends on std alone so the
//! fuzz target can include this file directly.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    Empty,
    Absolute,
    DotSegment,
    EmptySegment,
    Nul,
    Backslash,
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PathError::Empty => "empty file path",
            PathError::Absolute => {
                "absolute file paths are not allowed: use a path relative to the data dir"
            }
            PathError::DotSegment => "'.' and '..' segments are not allowed in file paths",
            PathError::EmptySegment => "empty segments ('//') are not allowed in file paths",
            PathError::Nul => "NUL bytes are not allowed in file paths",
            PathError::Backslash => "backslashes are not allowed in file paths",
        })
    }
}

/// Check a decoded relative path; Ok returns it unchanged.
pub fn check_relative(path: &str) -> Result<&str, PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.starts_with('/') {
        return Err(PathError::Absolute);
    }
    if path.contains('\0') {
        return Err(PathError::Nul);
    }
    if path.contains('\\') {
        return Err(PathError::Backslash);
    }
    for seg in path.split('/') {
        match seg {
            "" => return Err(PathError::EmptySegment),
            "." | ".." => return Err(PathError::DotSegment),
            _ => {}
        }
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_relative_paths() {
        assert_eq!(check_relative("a/b.bin"), Ok("a/b.bin"));
        assert_eq!(check_relative("..a/b..c"), Ok("..a/b..c"));
    }

    #[test]
    fn refuses_escapes() {
        assert_eq!(check_relative("../etc/passwd"), Err(PathError::DotSegment));
        assert_eq!(check_relative("a/../../b"), Err(PathError::DotSegment));
        assert_eq!(check_relative("a/./b"), Err(PathError::DotSegment));
        assert_eq!(check_relative("/etc/passwd"), Err(PathError::Absolute));
        assert_eq!(check_relative("a//b"), Err(PathError::EmptySegment));
        assert_eq!(check_relative("a/"), Err(PathError::EmptySegment));
        assert_eq!(check_relative(""), Err(PathError::Empty));
        assert_eq!(check_relative("a\0b"), Err(PathError::Nul));
        assert_eq!(check_relative("..\\x"), Err(PathError::Backslash));
    }
}
