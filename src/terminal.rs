//! The controlling terminal, lent to `orch ci --shell`: raw mode while a shell is open,
//! keystrokes read without blocking a thread, the window's size as it changes.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use rustix::fs::OFlags;
use rustix::termios::{OptionalActions, Termios};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::mpsc;

use crate::exec::ShellIo;
use crate::sched::Terminal;

/// This process's terminal (standard input and output).
pub struct Tty;

/// Whether standard input and output are both a terminal: a shell needs one to type into.
pub fn available() -> bool {
    use std::io::IsTerminal;
    io::stdin().is_terminal() && io::stdout().is_terminal()
}

impl Terminal for Tty {
    fn open(&self) -> Result<ShellIo, String> {
        let fd = io::stdin().as_fd().try_clone_to_owned().map_err(|e| format!("standard input: {e}"))?;
        let saved = rustix::termios::tcgetattr(&fd).map_err(|e| format!("standard input is not a terminal: {e}"))?;
        let flags = rustix::fs::fcntl_getfl(&fd).map_err(|e| format!("standard input: {e}"))?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(&fd, OptionalActions::Now, &raw).map_err(|e| format!("raw mode: {e}"))?;
        // From here on the guard puts the terminal back, whatever happens.
        let guard = Restore { fd, saved, flags };
        // Non-blocking reads, so no thread stays stuck reading a key after the shell ends.
        rustix::fs::fcntl_setfl(&guard.fd, flags | OFlags::NONBLOCK).map_err(|e| format!("standard input: {e}"))?;
        let reader = guard.fd.try_clone().map_err(|e| format!("standard input: {e}"))?;
        // SAFETY: the AsyncFd owns this descriptor (a duplicate nobody else holds): it stays
        // open, and names the same file description, until the AsyncFd is dropped.
        #[allow(unsafe_code)]
        let reader = unsafe { AsyncFd::register(reader) }.map_err(|e| format!("standard input: {e}"))?;
        let size = window_size();
        let (tx, rx) = mpsc::channel(4);
        let watcher = tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut winch) = signal(SignalKind::window_change()) else { return };
            while winch.recv().await.is_some() {
                if let Some(size) = window_size()
                    && tx.send(size).await.is_err()
                {
                    return;
                }
            }
        });
        Ok(ShellIo {
            input: Box::new(Keys { fd: reader, _guard: guard, watcher }),
            output: Box::new(io::stdout()),
            size,
            resized: Some(rx),
        })
    }
}

fn window_size() -> Option<(u16, u16)> {
    let ws = rustix::termios::tcgetwinsize(io::stdout()).ok()?;
    (ws.ws_col > 0 && ws.ws_row > 0).then_some((ws.ws_col, ws.ws_row))
}

/// Puts the terminal's mode and standard input's flags back when dropped.
struct Restore {
    fd: OwnedFd,
    saved: Termios,
    flags: OFlags,
}

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = rustix::fs::fcntl_setfl(&self.fd, self.flags);
        let _ = rustix::termios::tcsetattr(&self.fd, OptionalActions::Now, &self.saved);
    }
}

/// Keystrokes from standard input.
struct Keys {
    fd: AsyncFd<OwnedFd>,
    _guard: Restore,
    watcher: tokio::task::JoinHandle<()>,
}

impl Drop for Keys {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

impl AsyncRead for Keys {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut ready = match self.fd.poll_read_ready(cx) {
                Poll::Ready(r) => r?,
                Poll::Pending => return Poll::Pending,
            };
            let unfilled = buf.initialize_unfilled();
            match ready.try_io(|fd| rustix::io::read(fd.get_ref(), &mut *unfilled).map_err(io::Error::from)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                // Not ready after all: wait for the next readiness.
                Err(_would_block) => continue,
            }
        }
    }
}
