//! Child processes for stdio servers (DESIGN 4.3): each in its own session and
//! process group, dying with the manager, stopped in the MCP spec's order, and
//! never leaving orphans or zombies behind.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};

use crate::config::spec::Resources;

/// What to run.
pub struct SpawnSpec<'a> {
    pub command: &'a str,
    pub args: &'a [String],
    pub working_directory: &'a Path,
    pub environment: &'a BTreeMap<String, String>,
    pub resources: Option<&'a Resources>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("command `{command}` not found")]
    NotFound { command: String },
    #[error("permission denied running `{command}`")]
    PermissionDenied { command: String },
    #[error("working directory {dir} does not exist")]
    NoWorkingDirectory { dir: String },
    #[error("cannot start `{command}`")]
    Other {
        command: String,
        #[source]
        source: io::Error,
    },
}

impl SpawnError {
    /// Errors that retrying cannot fix: they go to `Failed` at once (DESIGN 4.3).
    pub fn is_permanent(&self) -> bool {
        !matches!(self, SpawnError::Other { .. })
    }
}

/// A running child with its pipes taken out.
pub struct ServerProcess {
    pub pid: u32,
    /// Start time from /proc (clock ticks since boot): tells our pid from a reused one.
    pub start_time: Option<u64>,
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    pub stdout: Option<ChildStdout>,
    pub stderr: Option<ChildStderr>,
    /// Its session was killed after the child was reaped: nothing is left
    /// for `Drop` to do.
    contained: bool,
}

/// Spawns a stdio server in a new session (so it and its children form one process
/// group), with piped stdin/stdout/stderr, resource limits, and PR_SET_PDEATHSIG so
/// it dies with the manager.
///
/// Must be called from a runtime worker thread, not `spawn_blocking`: PDEATHSIG
/// fires when the spawning *thread* exits, and blocking-pool threads come and go.
pub fn spawn(spec: &SpawnSpec<'_>) -> Result<ServerProcess, SpawnError> {
    if !spec.working_directory.is_dir() {
        return Err(SpawnError::NoWorkingDirectory {
            dir: spec.working_directory.display().to_string(),
        });
    }
    let mut cmd = Command::new(resolve_program(spec.command));
    cmd.args(spec.args)
        .current_dir(spec.working_directory)
        .envs(spec.environment)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let limits: Vec<(libc::__rlimit_resource_t, u64)> = spec
        .resources
        .map(|r| {
            let mut l = Vec::new();
            if let Some(mb) = r.memory_mb {
                l.push((libc::RLIMIT_AS, mb.saturating_mul(1024 * 1024)));
            }
            if let Some(secs) = r.cpu_seconds.filter(|s| *s > 0) {
                l.push((libc::RLIMIT_CPU, secs));
            }
            if let Some(n) = r.nofile {
                l.push((libc::RLIMIT_NOFILE, n));
            }
            l
        })
        .unwrap_or_default();
    // SAFETY: the closure runs in the forked child before exec and only calls
    // async-signal-safe functions (setsid, prctl, setrlimit); it allocates nothing
    // (`limits` was built before the fork).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() == -1 {
                return Err(io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) == -1 {
                return Err(io::Error::last_os_error());
            }
            for (resource, value) in &limits {
                let limit = libc::rlimit {
                    rlim_cur: *value,
                    rlim_max: *value,
                };
                if libc::setrlimit(*resource, &limit) == -1 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => SpawnError::NotFound {
            command: spec.command.to_string(),
        },
        io::ErrorKind::PermissionDenied => SpawnError::PermissionDenied {
            command: spec.command.to_string(),
        },
        _ => SpawnError::Other {
            command: spec.command.to_string(),
            source,
        },
    })?;
    // A spawned child that has not been waited for always has an id.
    let pid = child.id().expect("a freshly spawned child has a pid");
    Ok(ServerProcess {
        pid,
        start_time: process_start_time(pid),
        stdin: child.stdin.take(),
        stdout: child.stdout.take(),
        stderr: child.stderr.take(),
        child,
        contained: false,
    })
}

/// The program to run for `command`. `mcp-manager` itself (the built-in task
/// runner) is taken from PATH when it is there, else it is this very binary, so
/// configs using the built-in server work without installing anything.
pub fn resolve_program(command: &str) -> std::path::PathBuf {
    if command == env!("CARGO_PKG_NAME")
        && !on_path(command)
        && let Ok(me) = std::env::current_exe()
    {
        return me;
    }
    std::path::PathBuf::from(command)
}

fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(program)).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// How long to wait after closing stdin before signalling (DESIGN 4.3).
pub const STDIN_CLOSE_WAIT: Duration = Duration::from_secs(5);

impl Drop for ServerProcess {
    /// However a process is let go (a start interrupted by a stop, an instance
    /// task aborted at the shutdown deadline), nothing it started outlives it.
    /// After a normal stop this finds nothing left.
    fn drop(&mut self) {
        if self.contained {
            return;
        }
        match self.child.try_wait() {
            // Not reaped: its pid (and so the group and session number) is
            // still ours.
            Ok(None) => kill_session(self.pid),
            _ => kill_session_members(self.pid),
        }
    }
}

/// Stops a server the MCP way: close stdin, wait, SIGTERM the whole group, wait up
/// to `grace`, SIGKILL. Then SIGKILLs whatever is left of its session (children
/// that ignored SIGTERM, outlived their parent or moved to process groups of
/// their own, like the task runner's executors) and reaps the child.
pub async fn stop(process: &mut ServerProcess, grace: Duration) -> io::Result<ExitStatus> {
    drop(process.stdin.take());
    let pgid = process.pid;
    let status = match wait_for(&mut process.child, STDIN_CLOSE_WAIT).await? {
        Some(status) => status,
        None => {
            signal_group(pgid, libc::SIGTERM);
            match wait_for(&mut process.child, grace).await? {
                Some(status) => status,
                None => {
                    signal_group(pgid, libc::SIGKILL);
                    process.child.wait().await?
                }
            }
        }
    };
    kill_session_members(pgid);
    process.contained = true;
    Ok(status)
}

/// Kills the whole session at once (a second stop request) and reaps the child.
pub async fn kill(process: &mut ServerProcess) -> io::Result<ExitStatus> {
    kill_session(process.pid);
    let status = process.child.wait().await?;
    // Descendants that were forking while the first kill ran.
    kill_session_members(process.pid);
    process.contained = true;
    Ok(status)
}

/// SIGKILLs every process of the session `sid` (our server's group, and any
/// group its descendants made inside the session). Only while the leader is
/// not reaped: until then its pid, and so the group and session number, is
/// ours. After a reap use [`kill_session_members`].
pub fn kill_session(sid: u32) {
    signal_group(sid, libc::SIGKILL);
    kill_session_members(sid);
}

/// SIGKILLs the processes found in the session `sid`, one by one (no group
/// signal: once the leader is reaped and the session empty, the number may
/// belong to someone else; a session with members keeps its number).
pub fn kill_session_members(sid: u32) {
    for pid in session_members(sid) {
        if let Ok(pid) = libc::pid_t::try_from(pid)
            && pid > 1
        {
            // SAFETY: kill has no memory-safety preconditions; ESRCH is fine.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

async fn wait_for(child: &mut Child, limit: Duration) -> io::Result<Option<ExitStatus>> {
    match tokio::time::timeout(limit, child.wait()).await {
        Ok(status) => status.map(Some),
        Err(_) => Ok(None),
    }
}

/// Sends `signal` to process group `pgid`; a group that is already gone is fine.
pub fn signal_group(pgid: u32, signal: libc::c_int) {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else { return };
    if pgid <= 1 {
        return; // never signal init's group or "every process"
    }
    // SAFETY: killpg has no memory-safety preconditions; errors (ESRCH) are ignored.
    unsafe {
        libc::killpg(pgid, signal);
    }
}

/// Field 22 of /proc/PID/stat: the process start time in clock ticks since boot.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: skip past the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Process group and session of a process, from /proc/PID/stat (fields 5 and 6).
fn group_and_session(pid: u32) -> Option<(u32, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let pgrp = fields.nth(2)?.parse().ok()?;
    let session = fields.next()?.parse().ok()?;
    Some((pgrp, session))
}

/// Live (not zombie) processes whose process group is `pgid`.
pub fn group_members(pgid: u32) -> Vec<u32> {
    members(|(group, _)| group == pgid)
}

/// Live (not zombie) processes of the session `sid`, whatever their group.
pub fn session_members(sid: u32) -> Vec<u32> {
    if sid <= 1 {
        return Vec::new();
    }
    members(|(_, session)| session == sid)
}

fn members(matches: impl Fn((u32, u32)) -> bool) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| group_and_session(*pid).is_some_and(&matches))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| s.rfind(')').map(|i| s[i + 1..].trim_start().starts_with('Z')))
                == Some(false)
        })
        .collect()
}

/// After a manager restart: kills the session a previous run recorded (its
/// server's process group and every group its descendants made), if it is
/// still ours. We start every server with `setsid`, so session = group = leader
/// pid. The leader is ours when its start time matches; if the leader is gone,
/// leftover members count as ours only when they started no earlier than the
/// recorded leader. Returns how many processes were signalled.
pub fn kill_recorded_group(pgid: u32, recorded_start: u64) -> usize {
    let members = session_members(pgid);
    let ours = match process_start_time(pgid) {
        Some(start) => start == recorded_start,
        None => members
            .iter()
            .all(|pid| process_start_time(*pid).is_some_and(|t| t >= recorded_start)),
    };
    if !ours || members.is_empty() {
        return 0;
    }
    if process_start_time(pgid) == Some(recorded_start) {
        // The leader lives (and is the one we started): the group is ours.
        kill_session(pgid);
    } else {
        kill_session_members(pgid);
    }
    members.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> ServerProcess {
        let args = vec!["-c".to_string(), script.to_string()];
        let env = BTreeMap::new();
        spawn(&SpawnSpec {
            command: "sh",
            args: &args,
            working_directory: Path::new("/"),
            environment: &env,
            resources: None,
        })
        .unwrap()
    }

    async fn eventually_empty(pgid: u32) -> bool {
        for _ in 0..100 {
            if group_members(pgid).is_empty() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    #[tokio::test]
    async fn a_server_that_exits_on_stdin_close_stops_without_signals() {
        let mut p = sh("cat >/dev/null; exit 3");
        let status = stop(&mut p, Duration::from_secs(5)).await.unwrap();
        assert_eq!(status.code(), Some(3));
        assert!(eventually_empty(p.pid).await);
    }

    #[tokio::test]
    async fn sigterm_reaches_grandchildren_and_nothing_is_left() {
        // A shell wrapper with a background child, both ignoring stdin: like npx.
        let mut p = sh("sleep 300 & sleep 300; wait");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(group_members(p.pid).len() >= 2, "wrapper and child run");
        let started = std::time::Instant::now();
        let status = tokio::time::timeout(Duration::from_secs(20), stop(&mut p, Duration::from_secs(5)))
            .await
            .unwrap()
            .unwrap();
        assert!(status.code().is_none(), "ended by a signal");
        assert!(started.elapsed() < Duration::from_secs(15));
        assert!(eventually_empty(p.pid).await, "no orphans: {:?}", group_members(p.pid));
    }

    #[tokio::test]
    async fn sigkill_after_grace_for_servers_that_ignore_sigterm() {
        let mut p = sh("trap '' TERM; while :; do sleep 1; done");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let status = stop(&mut p, Duration::from_millis(300)).await.unwrap();
        assert!(status.code().is_none());
        assert!(eventually_empty(p.pid).await);
    }

    #[tokio::test]
    async fn permanent_spawn_errors_are_classified() {
        let env = BTreeMap::new();
        let spec = |command| SpawnSpec {
            command,
            args: &[],
            working_directory: Path::new("/"),
            environment: &env,
            resources: None,
        };
        let err = spawn(&spec("/definitely/not/here")).err().unwrap();
        assert!(err.is_permanent());
        assert_eq!(err.to_string(), "command `/definitely/not/here` not found");
        let dir = tempfile::tempdir().unwrap();
        let not_executable = dir.path().join("server.sh");
        std::fs::write(&not_executable, "#!/bin/sh\n").unwrap();
        let err = spawn(&spec(not_executable.to_str().unwrap())).err().unwrap();
        assert!(matches!(err, SpawnError::PermissionDenied { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn recorded_groups_are_killed_only_when_they_are_ours() {
        let mut p = sh("sleep 300 & sleep 300; wait");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let start = p.start_time.unwrap();
        assert_eq!(
            kill_recorded_group(p.pid, start + 1),
            0,
            "start time mismatch: not ours"
        );
        assert!(!group_members(p.pid).is_empty());
        assert!(kill_recorded_group(p.pid, start) >= 2);
        let _ = p.child.wait().await;
        assert!(eventually_empty(p.pid).await);
    }

    #[test]
    fn the_built_in_server_resolves_to_this_binary_when_not_installed() {
        assert_eq!(resolve_program("sh"), std::path::PathBuf::from("sh"));
        let resolved = resolve_program("mcp-manager");
        assert!(
            resolved == std::path::Path::new("mcp-manager") || resolved.is_absolute(),
            "{resolved:?}"
        );
        if !on_path("mcp-manager") {
            assert_eq!(resolved, std::env::current_exe().unwrap());
        }
    }

    #[test]
    fn start_time_is_read_from_proc() {
        let me = std::process::id();
        assert!(process_start_time(me).is_some());
        assert_eq!(process_start_time(u32::MAX), None);
    }
}
