//! When mcp-manager is PID 1 (the entrypoint of a container: `bridge` in a pod),
//! it must do what init does: orphans of the servers' process trees are
//! re-parented to PID 1 and stay zombies until it reaps them, and a signal
//! without a handler does nothing to PID 1. So PID 1 forks: the parent is a
//! minimal init (forward signals, reap every child, exit as the real program
//! does) and the child runs mcp-manager as usual. Nothing changes elsewhere.

use std::os::unix::process::CommandExt;
use std::process::ExitCode;

/// Signals passed on to the program (the rest keep their default).
const FORWARDED: [libc::c_int; 6] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// `Some(exit code)` when this process was PID 1 and has been the init of the
/// real program, which has now ended; `None`: carry on as usual.
pub fn run_as_init_if_pid_1() -> Option<ExitCode> {
    // The child this makes is never PID 1 itself, so it runs the command.
    if std::process::id() != 1 {
        return None;
    }
    // SAFETY: plain libc signal-set calls on a local set; the process is still
    // single-threaded (nothing has started a thread yet).
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        for signal in FORWARDED {
            libc::sigaddset(&mut set, signal);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    let mut command = std::process::Command::new("/proc/self/exe");
    command.args(std::env::args_os().skip(1));
    if let Some(arg0) = std::env::args_os().next() {
        command.arg0(arg0);
    }
    // SAFETY: between fork and exec only async-signal-safe calls: the child
    // gets the usual (empty) signal mask back.
    unsafe {
        command.pre_exec(move || {
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            Ok(())
        });
    }
    let child = match command.spawn() {
        Ok(child) => child.id() as libc::pid_t,
        Err(e) => {
            // No /proc, say: run the command as PID 1 itself, as before.
            eprintln!("mcp-manager: cannot be the container's init ({e}); orphans of servers will not be reaped");
            // SAFETY: undoes the block above on this (still only) thread.
            unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
            return None;
        }
    };
    loop {
        let mut signal: libc::c_int = 0;
        // SAFETY: waits for one of the blocked signals of `set`.
        if unsafe { libc::sigwait(&set, &mut signal) } != 0 {
            continue;
        }
        if signal != libc::SIGCHLD {
            // SAFETY: a signal to our own child.
            unsafe { libc::kill(child, signal) };
            continue;
        }
        // Reap everything that has ended: ours, and every orphan handed to us.
        loop {
            let mut status: libc::c_int = 0;
            // SAFETY: waitpid on any child, without blocking.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            if pid == child {
                let code = if libc::WIFEXITED(status) {
                    libc::WEXITSTATUS(status)
                } else {
                    128 + libc::WTERMSIG(status)
                };
                return Some(ExitCode::from(u8::try_from(code).unwrap_or(1)));
            }
        }
    }
}
