//! Watching the config files (DESIGN 4.5): notify events, filtered to files that
//! can hold servers, debounced, then one `Reload` request to the reconciler.
//!
//! Folders are watched recursively (not files), so the atomic-rename saves editors
//! do are seen, and new config files in new folders are found.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{Event, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::config::SourceKind;
use crate::reconciler::Request;

/// Keeps the watcher alive; dropping it stops watching.
pub struct WatchGuard {
    _watcher: RecommendedWatcher,
    _task: tokio::task::JoinHandle<()>,
}

/// Whether a changed path can matter to the config. Paths under `ignored`
/// folders (the state dir) never do: sled writing there must not cause reloads.
pub fn is_relevant(path: &Path, explicit_files: &[PathBuf], ignored: &[PathBuf]) -> bool {
    if explicit_files.iter().any(|f| f == path) {
        return true;
    }
    if ignored.iter().any(|i| path.starts_with(i)) {
        return false;
    }
    if path
        .components()
        .any(|c| crate::discovery::SKIPPED_DIRS.iter().any(|s| c.as_os_str() == *s))
    {
        return false;
    }
    let in_scripts_mcp = path.parent().is_some_and(|p| p.ends_with("scripts/mcp"));
    // A folder that appears or vanishes may hold (or have held) config files.
    let looks_like_dir = path.extension().is_none() && !in_scripts_mcp;
    SourceKind::classify(path, false).is_some() || in_scripts_mcp || looks_like_dir
}

/// Starts watching `paths` (files or folders); sends `Request::Reload` after
/// `debounce` of quiet following relevant changes.
pub fn spawn(
    paths: &[PathBuf],
    ignored: Vec<PathBuf>,
    debounce: Duration,
    requests: mpsc::Sender<Request>,
) -> notify::Result<WatchGuard> {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let mut explicit_files = Vec::new();
    let mut targets = Vec::new();
    for path in paths {
        let path = std::path::absolute(path).unwrap_or_else(|_| path.clone());
        if path.is_file() {
            // Watch the folder: editors replace files by renaming over them.
            explicit_files.push(path.clone());
            targets.push((
                path.parent().unwrap_or(Path::new("/")).to_path_buf(),
                RecursiveMode::NonRecursive,
            ));
        } else {
            targets.push((path, RecursiveMode::Recursive));
        }
    }
    let files = explicit_files.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<Event>| match event {
        Ok(event) => {
            if event.paths.iter().any(|p| is_relevant(p, &files, &ignored)) {
                let _ = tx.send(());
            }
        }
        Err(e) => tracing::warn!("config watcher: {e}"),
    })?;
    for (target, mode) in &targets {
        if let Err(e) = watcher.watch(target, *mode) {
            tracing::warn!("cannot watch {}: {e}", target.display());
        }
    }
    let task = tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Wait for `debounce` without further changes, then reload once.
            loop {
                match tokio::time::timeout(debounce, rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            tracing::debug!("config changed; reloading");
            if requests.send(Request::Reload).await.is_err() {
                return;
            }
        }
    });
    Ok(WatchGuard {
        _watcher: watcher,
        _task: task,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_config_files_and_folders_trigger_reloads() {
        let none: &[PathBuf] = &[];
        let state = [PathBuf::from("/r/.state")];
        assert!(!is_relevant(Path::new("/r/.state/state.sled/db"), none, &state));
        assert!(is_relevant(Path::new("/r/mcp-manager.yaml"), none, none));
        assert!(is_relevant(Path::new("/r/.cursor/mcp.json"), none, none));
        assert!(is_relevant(Path::new("/r/scripts/mcp/tool"), none, none));
        assert!(is_relevant(Path::new("/r/new-folder"), none, none));
        assert!(!is_relevant(Path::new("/r/notes.txt"), none, none));
        assert!(!is_relevant(Path::new("/r/.mcp-manager.yaml.swp"), none, none));
        assert!(!is_relevant(Path::new("/r/node_modules/x/package.json"), none, none));
        assert!(is_relevant(
            Path::new("/r/custom.yaml"),
            &[PathBuf::from("/r/custom.yaml")],
            none
        ));
    }
}
