//! Path confinement: every path a client gives must stay inside the server's base dir.
//!
//! The rules, checked in this order:
//! 1. The argument must be non-empty, without NUL bytes and without any `..`
//!    component (even one that would stay inside: the rule is simple to state).
//! 2. A relative path is joined to the directory it is relative to (the base dir or
//!    the tool's `base_dir` sub-folder); an absolute path is taken as is and must be
//!    inside the base dir lexically.
//! 3. The longest existing prefix is canonicalized (following symlinks) and must
//!    still be inside the canonical base dir, so a symlink that points out is
//!    refused. A dangling symlink is refused too.
//!
//! Steps 1 and 2 are pure ([`check_argument`], [`join_confined`]); step 3 reads the
//! file system ([`BaseDir::resolve`]). Files the task runner writes are created
//! fresh (an existing file or symlink is removed first), so a symlink planted after
//! the check is replaced, not followed.

use std::path::{Component, Path, PathBuf};

use super::error::TaskRunnerError;

/// Step 1: rejects arguments that are empty, hold NUL bytes or `..` components.
pub fn check_argument(arg: &str) -> Result<&Path, TaskRunnerError> {
    let unsafe_path = |reason| TaskRunnerError::UnsafePath {
        path: arg.to_string(),
        reason,
    };
    if arg.trim().is_empty() {
        return Err(unsafe_path("the path is empty"));
    }
    if arg.contains('\0') {
        return Err(unsafe_path("the path contains a NUL byte"));
    }
    let path = Path::new(arg);
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(unsafe_path("`..` is not allowed"));
    }
    Ok(path)
}

/// Step 2: joins a checked argument to `from` and checks that the result is
/// lexically inside `root` (`from` must itself be inside `root`).
pub fn join_confined(root: &Path, from: &Path, arg: &str) -> Result<PathBuf, TaskRunnerError> {
    let path = check_argument(arg)?;
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        from.join(path)
    };
    // `components()` drops `.` and repeated separators, so this compares clean paths.
    let normalized: PathBuf = joined.components().collect();
    if normalized.starts_with(root) {
        Ok(normalized)
    } else {
        Err(TaskRunnerError::OutsideBaseDir { path: arg.to_string() })
    }
}

/// The server's base dir, canonical. Every path a tool touches is inside it.
#[derive(Debug, Clone)]
pub struct BaseDir {
    root: PathBuf,
}

impl BaseDir {
    /// Opens an existing directory as the base dir.
    pub fn open(path: &Path) -> Result<Self, TaskRunnerError> {
        let base_dir_error = |source| TaskRunnerError::BaseDir {
            path: path.to_path_buf(),
            source,
        };
        let root = std::fs::canonicalize(path).map_err(base_dir_error)?;
        if !root.is_dir() {
            return Err(base_dir_error(std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                "not a directory",
            )));
        }
        Ok(Self { root })
    }

    /// The canonical base dir.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Resolves a client's path argument relative to `from` (a canonical directory
    /// inside the base dir), following the three rules in the module docs. The
    /// result is canonical up to its first missing component; it may not exist.
    pub fn resolve(&self, from: &Path, arg: &str) -> Result<PathBuf, TaskRunnerError> {
        let joined = join_confined(&self.root, from, arg)?;
        let outside = || TaskRunnerError::OutsideBaseDir { path: arg.to_string() };
        let resolved = canonicalize_existing_prefix(&joined).map_err(|_| outside())?;
        if resolved.starts_with(&self.root) {
            Ok(resolved)
        } else {
            Err(outside())
        }
    }

    /// Resolves the optional `base_dir` argument of a tool: the base dir itself when
    /// absent. The directory must exist.
    pub fn resolve_dir(&self, arg: Option<&str>) -> Result<PathBuf, TaskRunnerError> {
        let Some(arg) = arg else {
            return Ok(self.root.clone());
        };
        let dir = self.resolve(&self.root, arg)?;
        match std::fs::metadata(&dir) {
            Ok(metadata) if metadata.is_dir() => Ok(dir),
            Ok(_) => Err(TaskRunnerError::NotADirectory(arg.to_string())),
            Err(_) => Err(TaskRunnerError::NotFound(arg.to_string())),
        }
    }

    /// `path` relative to the base dir, for messages and results (`.` for the base
    /// dir itself).
    pub fn display(&self, path: &Path) -> String {
        match path.strip_prefix(&self.root) {
            Ok(relative) if relative.as_os_str().is_empty() => ".".to_string(),
            Ok(relative) => relative.display().to_string(),
            Err(_) => path.display().to_string(),
        }
    }
}

/// Canonicalizes the longest prefix of `path` that exists and appends the rest.
/// An existing entry that cannot be canonicalized (a dangling symlink, a loop) is
/// an error.
fn canonicalize_existing_prefix(path: &Path) -> std::io::Result<PathBuf> {
    let mut missing = Vec::new();
    let mut current = path;
    loop {
        if std::fs::symlink_metadata(current).is_ok() {
            let mut resolved = std::fs::canonicalize(current)?;
            resolved.extend(missing.iter().rev());
            return Ok(resolved);
        }
        match (current.parent(), current.file_name()) {
            (Some(parent), Some(name)) => {
                missing.push(name.to_os_string());
                current = parent;
            }
            _ => return Err(std::io::ErrorKind::NotFound.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_nul_and_parent_components_are_rejected() {
        for arg in ["", "  ", "a\0b", "..", "../x", "a/../b", "a/..", "/base/../etc"] {
            assert!(check_argument(arg).is_err(), "{arg:?}");
        }
        for arg in ["a", "a/b.md", "./a", "/base/x", "a..b", "...", ".hidden"] {
            assert!(check_argument(arg).is_ok(), "{arg:?}");
        }
    }

    #[test]
    fn relative_paths_join_the_directory_they_are_relative_to() {
        let root = Path::new("/base");
        let from = Path::new("/base/proj");
        assert_eq!(
            join_confined(root, from, "./001_a.md").ok(),
            Some(PathBuf::from("/base/proj/001_a.md"))
        );
        assert_eq!(
            join_confined(root, root, "proj//x").ok(),
            Some(PathBuf::from("/base/proj/x"))
        );
    }

    #[test]
    fn absolute_paths_must_be_inside_the_root() {
        let root = Path::new("/base");
        assert!(join_confined(root, root, "/base/proj/x").is_ok());
        assert!(join_confined(root, root, "/base").is_ok());
        for arg in ["/etc/passwd", "/basement/x", "/"] {
            assert!(
                matches!(
                    join_confined(root, root, arg),
                    Err(TaskRunnerError::OutsideBaseDir { .. })
                ),
                "{arg}"
            );
        }
    }

    #[test]
    fn symlinks_that_escape_are_refused() -> std::io::Result<()> {
        let outside = tempfile::tempdir()?;
        let base = tempfile::tempdir()?;
        std::fs::create_dir(base.path().join("inner"))?;
        std::os::unix::fs::symlink(outside.path(), base.path().join("out"))?;
        std::os::unix::fs::symlink(base.path().join("inner"), base.path().join("in"))?;
        std::os::unix::fs::symlink("/nonexistent/x", base.path().join("dangling"))?;
        let base = BaseDir::open(base.path()).map_err(std::io::Error::other)?;
        let root = base.root().to_path_buf();

        assert!(base.resolve(&root, "out").is_err());
        assert!(base.resolve(&root, "out/new-file").is_err());
        assert!(base.resolve(&root, "dangling").is_err());
        assert_eq!(base.resolve(&root, "in/x").ok(), Some(root.join("inner/x")));
        assert_eq!(
            base.resolve(&root, "missing/deeper").ok(),
            Some(root.join("missing/deeper"))
        );
        Ok(())
    }

    #[test]
    fn display_is_relative_to_the_base_dir() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let base = BaseDir::open(dir.path()).map_err(std::io::Error::other)?;
        assert_eq!(base.display(base.root()), ".");
        assert_eq!(base.display(&base.root().join("p/001_a.md")), "p/001_a.md");
        Ok(())
    }
}
