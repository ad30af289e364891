//! The live terminal views (`status --watch`, `health --watch`): redrawn in
//! place from the service's `/events` stream, without flicker (cursor home,
//! each line cleared to its end, nothing cleared first). On a terminal the
//! view uses the alternate screen and reads keys unbuffered; `q` or Ctrl-C
//! quits and restores the terminal. Without a terminal, frames are printed one
//! after another.

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use super::client::ApiClient;

/// Puts the terminal in a mode for a live view and restores it when dropped.
struct Screen {
    saved: Option<libc::termios>,
}

impl Screen {
    fn enter() -> Screen {
        // SAFETY: termios is plain data; tcgetattr fills it for fd 0 or fails.
        let saved = unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            (libc::tcgetattr(0, &mut t) == 0).then_some(t)
        };
        if let Some(saved) = saved {
            let mut raw = saved;
            // Keys arrive one by one and are not echoed; Ctrl-C still signals.
            raw.c_lflag &= !(libc::ICANON | libc::ECHO);
            raw.c_cc[libc::VMIN] = 1;
            raw.c_cc[libc::VTIME] = 0;
            // SAFETY: raw is a valid termios derived from the current one.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, &raw) };
        }
        let mut out = std::io::stdout().lock();
        let _ = write!(out, "\x1b[?1049h\x1b[?25l");
        let _ = out.flush();
        Screen { saved }
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            // SAFETY: restores the termios read in `enter`.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, saved) };
        }
        let mut out = std::io::stdout().lock();
        let _ = write!(out, "\x1b[?25h\x1b[?1049l");
        let _ = out.flush();
    }
}

/// Draws `text` over the previous frame: home, each line then clear-to-end,
/// then clear below.
fn draw_in_place(text: &str) {
    let mut frame = String::with_capacity(text.len() + 64);
    frame.push_str("\x1b[H");
    for line in text.lines() {
        frame.push_str(line);
        frame.push_str("\x1b[K\r\n");
    }
    frame.push_str("\x1b[J");
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(frame.as_bytes());
    let _ = out.flush();
}

/// Runs a live view: `frame` is called for a new frame after every event from
/// the service (and every two seconds), and returns the text to show.
pub fn run<F, Fut>(rt: &tokio::runtime::Runtime, client: &ApiClient, mut frame: F) -> anyhow::Result<ExitCode>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<String>>,
{
    let tty = std::io::stdout().is_terminal() && std::io::stdin().is_terminal();
    let _screen = tty.then(Screen::enter);
    rt.block_on(async {
        let (keys_tx, mut keys) = tokio::sync::mpsc::unbounded_channel::<u8>();
        if tty {
            std::thread::spawn(move || {
                let mut byte = [0u8; 1];
                while std::io::stdin().read(&mut byte).is_ok_and(|n| n == 1) {
                    if keys_tx.send(byte[0]).is_err() {
                        break;
                    }
                }
            });
        }
        // False when stdout is gone (a closed pipe): the view ends.
        let draw = |text: String| {
            if tty {
                draw_in_place(&text);
                true
            } else {
                let mut out = std::io::stdout().lock();
                writeln!(out, "{text}---").and_then(|()| out.flush()).is_ok()
            }
        };
        if !draw(frame().await?) {
            return Ok(ExitCode::SUCCESS);
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let stream = client.stream("/events", move |_, _| tx.send(()).is_ok());
        tokio::pin!(stream);
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        tick.reset();
        loop {
            tokio::select! {
                result = &mut stream => return result.map(|()| ExitCode::SUCCESS),
                Some(()) = rx.recv() => {}
                _ = tick.tick() => {}
                Some(key) = keys.recv() => if matches!(key, b'q' | b'Q' | 3) { return Ok(ExitCode::SUCCESS) } else { continue },
                _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
            }
            // Coalesce a burst of events into one frame.
            tokio::time::sleep(Duration::from_millis(50)).await;
            while rx.try_recv().is_ok() {}
            if !draw(frame().await?) {
                return Ok(ExitCode::SUCCESS);
            }
        }
    })
}
