//! Executor processes: spawned in their own process group, killed as a group.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};
use tokio::sync::watch;

use super::command::ExecutorCommand;

/// Environment variable the executor gets: the task file's absolute path.
pub const TASK_FILE_ENV: &str = "MCP_TASK_RUNNER_TASK_FILE";

/// How an executor run ended.
#[derive(Debug)]
pub enum Finish {
    Exited(ExitStatus),
    TimedOut,
    Cancelled,
}

/// Spawns the executor in `cwd`, in a new process group, with stdout and stderr
/// going to the given files and `stdin_text` written to its stdin.
///
/// The child gets SIGKILL when the task runner dies (Linux `PR_SET_PDEATHSIG`; the
/// signal follows the spawning thread, which is a runtime worker thread that lives as
/// long as the server). Grandchildren are reached through the process group.
pub fn spawn(
    command: &ExecutorCommand,
    cwd: &Path,
    task_file: &Path,
    stdin_text: String,
    stdout: std::fs::File,
    stderr: std::fs::File,
) -> std::io::Result<Child> {
    let mut cmd = Command::new(&command.program);
    cmd.args(&command.args)
        .current_dir(cwd)
        .env(TASK_FILE_ENV, task_file)
        .stdin(Stdio::piped())
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr))
        .process_group(0)
        .kill_on_drop(true);
    #[cfg(target_os = "linux")]
    {
        let parent = libc::pid_t::try_from(std::process::id()).unwrap_or(0);
        // SAFETY: the closure runs in the forked child before exec and only calls
        // async-signal-safe functions (prctl, getppid); it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before prctl took effect.
                if libc::getppid() != parent {
                    return Err(std::io::Error::other("the task runner exited"));
                }
                Ok(())
            });
        }
    }
    let mut child = cmd.spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        // A separate task, so an executor that never reads stdin cannot block us;
        // a closed pipe (EPIPE) just means it did not want the text.
        tokio::spawn(async move {
            let _ = stdin.write_all(stdin_text.as_bytes()).await;
            let _ = stdin.shutdown().await;
        });
    }
    Ok(child)
}

/// Waits for the executor to exit, for `timeout` to pass or for `cancel` to turn
/// true. On timeout and cancellation the whole process group gets SIGKILL; after a
/// normal exit, leftovers in the group (background jobs) get it too.
pub async fn wait(child: &mut Child, timeout: Duration, cancel: &mut watch::Receiver<bool>) -> std::io::Result<Finish> {
    let pgid = child.id();
    let finish = tokio::select! {
        status = child.wait() => Finish::Exited(status?),
        () = tokio::time::sleep(timeout) => Finish::TimedOut,
        _ = cancel.wait_for(|cancelled| *cancelled) => Finish::Cancelled,
    };
    // On timeout and cancel the group is killed before the leader is reaped, so its
    // id cannot have been reused. After a normal exit, Linux does not hand out a pid
    // that is still some live process's group id: while leftovers exist the id is
    // ours. (With none left it could only be reused by a process that became a group
    // leader between the reap and this call; we accept that tiny window.)
    if let Some(pgid) = pgid {
        kill_group(pgid);
    }
    if !matches!(finish, Finish::Exited(_)) {
        child.wait().await?;
    }
    Ok(finish)
}

/// Sends SIGKILL to a process group; a group that is already gone is fine.
pub fn kill_group(pgid: u32) {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return;
    };
    if pgid <= 1 {
        return;
    }
    // SAFETY: killpg only sends a signal; pgid > 1 so it never targets our own
    // group (0) or every process (-1).
    unsafe {
        libc::killpg(pgid, libc::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> std::io::Result<(std::fs::File, std::fs::File)> {
        Ok((
            std::fs::File::create(dir.join("out"))?,
            std::fs::File::create(dir.join("err"))?,
        ))
    }

    fn sh(script: &str) -> ExecutorCommand {
        ExecutorCommand {
            program: "sh".into(),
            args: vec!["-c".into(), script.into()],
        }
    }

    #[tokio::test]
    async fn stdin_goes_in_and_stdout_lands_in_the_file() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let (out, err) = files(dir.path())?;
        let command = sh("cat; echo done; echo oops >&2; exit 4");
        let mut child = spawn(&command, dir.path(), dir.path(), "hello\n".into(), out, err)?;
        let (_tx, mut cancel) = watch::channel(false);
        let finish = wait(&mut child, Duration::from_secs(60), &mut cancel).await?;
        assert!(matches!(finish, Finish::Exited(status) if status.code() == Some(4)));
        assert_eq!(std::fs::read_to_string(dir.path().join("out"))?, "hello\ndone\n");
        assert_eq!(std::fs::read_to_string(dir.path().join("err"))?, "oops\n");
        Ok(())
    }

    #[tokio::test]
    async fn cancelling_kills_the_run() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let (out, err) = files(dir.path())?;
        let mut child = spawn(&sh("sleep 30"), dir.path(), dir.path(), String::new(), out, err)?;
        let (tx, mut cancel) = watch::channel(false);
        let _ = tx.send(true);
        let finish = wait(&mut child, Duration::from_secs(60), &mut cancel).await?;
        assert!(matches!(finish, Finish::Cancelled));
        Ok(())
    }
}
