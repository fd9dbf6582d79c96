//! Ctrl-C for the one-shot `diagnose`: the first SIGINT or SIGTERM asks the sampling loop to close
//! the window early (it polls [`requested`]); a second one ends the process at once, from the
//! handler, with the shell's code for death by that signal (130 for SIGINT, 143 for SIGTERM).
//!
//! Only `diagnose` installs these handlers: `run` answers signals through tokio, and the system
//! demo has its own.

use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

/// Signals received since [`install`].
static COUNT: AtomicUsize = AtomicUsize::new(0);
/// The first one's number.
static FIRST: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    // Only async-signal-safe work here: lock-free atomics and _exit.
    let _ = FIRST.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst);
    if COUNT.fetch_add(1, Ordering::SeqCst) >= 1 {
        // SAFETY: _exit is async-signal-safe; nothing is flushed or unwound, which is the point.
        unsafe { libc::_exit(128 + sig) };
    }
}

/// Installs the SIGINT and SIGTERM handlers. With SA_RESTART, so that a read of /proc or of the
/// netlink socket interrupted by the first signal carries on instead of failing with EINTR.
pub fn install() -> std::io::Result<()> {
    let handler: extern "C" fn(libc::c_int) = on_signal;
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler does only async-signal-safe work; a zeroed sigaction with an
        // emptied mask and SA_RESTART is valid.
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = handler as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The first signal's name once one has arrived: the stop condition for
/// [`crate::diagnose::Stop`].
pub fn requested() -> Option<&'static str> {
    if COUNT.load(Ordering::SeqCst) == 0 {
        return None;
    }
    Some(match FIRST.load(Ordering::SeqCst) {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        _ => "a signal",
    })
}
