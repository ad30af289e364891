//! Watching the config files (DESIGN 4.5): notify events, filtered to files that
//! can hold servers, debounced, then one `Reload` request to the reconciler.
//!
//! Folders are watched recursively (not files), so the atomic-rename saves editors
//! do are seen, and new config files in new folders are found.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::config::SourceKind;
use crate::reconciler::{Request, Snapshot};

/// Keeps the watcher alive; dropping it stops watching.
pub struct WatchGuard {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
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

/// Whether an event can change what a file holds (or whether it exists, its
/// name, its executable bit). Opening, reading and listing cannot: inotify
/// reports them too, and reloading on them made every reload (which reads the
/// files) trigger the next, and kept a real edit waiting while anything read
/// the folder.
pub fn is_edit(kind: &EventKind) -> bool {
    match kind {
        EventKind::Create(_) | EventKind::Remove(_) | EventKind::Modify(_) | EventKind::Any | EventKind::Other => true,
        // A write finished (some editors and tools only show this).
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
    }
}

/// Starts watching `paths` (files or folders); sends `Request::Reload` after
/// `debounce` of quiet following relevant changes. Folders that the config adds
/// (`discovery.config_directories`, published in the reconciler's snapshot as
/// `watched`) are watched from the moment they appear there.
pub fn spawn(
    paths: &[PathBuf],
    ignored: Vec<PathBuf>,
    debounce: Duration,
    requests: mpsc::Sender<Request>,
    mut snapshot: tokio::sync::watch::Receiver<std::sync::Arc<Snapshot>>,
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
            if is_edit(&event.kind) && event.paths.iter().any(|p| is_relevant(p, &files, &ignored)) {
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
    let base: Vec<PathBuf> = targets
        .iter()
        .filter(|(_, mode)| *mode == RecursiveMode::Recursive)
        .map(|(t, _)| t.clone())
        .collect();
    let mut extra: Vec<(PathBuf, RecursiveMode)> = Vec::new();
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = rx.recv() => if changed.is_none() { return },
                changed = snapshot.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let watched = snapshot.borrow_and_update().watched.clone();
                    if !retarget(&mut watcher, &base, &mut extra, &watched) {
                        continue;
                    }
                    // A folder just watched: read what it already holds.
                }
            }
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
    Ok(WatchGuard { task })
}

/// Follows `watched` (the config's folders besides `--config`): an existing
/// folder is watched recursively; a missing one through its parent, so its
/// creation is seen. Folders no longer wanted are unwatched. Returns whether a
/// folder started to be watched: files may have arrived in it before.
fn retarget(
    watcher: &mut RecommendedWatcher,
    base: &[PathBuf],
    extra: &mut Vec<(PathBuf, RecursiveMode)>,
    watched: &[PathBuf],
) -> bool {
    let mut wanted: Vec<(PathBuf, RecursiveMode)> = Vec::new();
    for path in watched.iter().filter(|p| !base.iter().any(|b| p.starts_with(b))) {
        let target = if path.is_dir() {
            (path.clone(), RecursiveMode::Recursive)
        } else {
            match path.parent().filter(|p| p.is_dir()) {
                Some(parent) => (parent.to_path_buf(), RecursiveMode::NonRecursive),
                None => continue,
            }
        };
        if !wanted.contains(&target) {
            wanted.push(target);
        }
    }
    extra.retain(|target| {
        let keep = wanted.contains(target);
        if !keep {
            let _ = watcher.unwatch(&target.0);
        }
        keep
    });
    let mut added = false;
    for target in wanted {
        if !extra.contains(&target) {
            match watcher.watch(&target.0, target.1) {
                Ok(()) => {
                    added |= target.1 == RecursiveMode::Recursive;
                    extra.push(target);
                }
                Err(e) => tracing::warn!("cannot watch {}: {e}", target.0.display()),
            }
        }
    }
    added
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 11 (defect 2): reads are not edits.
    #[test]
    fn opening_reading_and_listing_are_not_edits() {
        use notify::event::{CreateKind, DataChange, MetadataKind, ModifyKind, RemoveKind, RenameMode};
        assert!(!is_edit(&EventKind::Access(AccessKind::Open(AccessMode::Any))));
        assert!(!is_edit(&EventKind::Access(AccessKind::Close(AccessMode::Read))));
        assert!(!is_edit(&EventKind::Access(AccessKind::Read)));
        assert!(is_edit(&EventKind::Access(AccessKind::Close(AccessMode::Write))));
        assert!(is_edit(&EventKind::Create(CreateKind::File)));
        assert!(is_edit(&EventKind::Modify(ModifyKind::Data(DataChange::Any))));
        assert!(is_edit(&EventKind::Modify(ModifyKind::Name(RenameMode::To))));
        assert!(is_edit(&EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any))));
        assert!(is_edit(&EventKind::Remove(RemoveKind::File)));
    }

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
