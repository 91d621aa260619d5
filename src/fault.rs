//! Fault injection: make a dump fail at a named step, to prove that a failure anywhere leaves
//! the target exactly as it was.
//!
//! Set `CREST_FAIL_AT=<step>` in crest's environment (read once, at the first check). The dump
//! then fails at that step with an error saying "injected failure at <step>", and goes through
//! its ordinary error path: the parasite is cured, the threads are released, no image is left.
//! The steps, in the order a dump reaches them:
//!
//! | step | where |
//! |---|---|
//! | `seize` | every thread is seized and stopped |
//! | `remote-syscall-<n>` | right after the n-th syscall crest runs in the target (n = 1, 2, ...; see [`crate::infect`] for which call is which) |
//! | `blob-mapped` | the parasite is mapped and its arguments written, before it runs |
//! | `parasite-command` | the parasite stopped at its breakpoint after a command, before crest reads the results |
//! | `thread-parasite` | (several threads) the parasite stopped in the first non-leader thread, before crest reads its results |
//! | `before-cure` | the results are read, the parasite is still in place |
//! | `pages` | the first batch of pages is in the page file |
//!
//! Unit tests cannot set the environment variable (it is process-wide and tests run in
//! parallel), so they use [`inject_here`], which applies to the calling thread only; the dump
//! runs entirely on the thread that called it.

use std::cell::RefCell;
use std::sync::OnceLock;

/// The environment variable naming the step to fail at.
pub const ENV: &str = "CREST_FAIL_AT";

/// The failure [`point`] reports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("injected failure at {step} ({ENV} is set)")]
pub struct Injected {
    pub step: String,
}

thread_local! {
    /// A step set for the current thread only (tests).
    static LOCAL: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn configured() -> Option<&'static str> {
    static STEP: OnceLock<Option<String>> = OnceLock::new();
    STEP.get_or_init(|| std::env::var(ENV).ok().filter(|s| !s.is_empty()))
        .as_deref()
}

/// Fails when `step` is the configured step (for this thread, or else for the process).
pub fn point(step: &str) -> Result<(), Injected> {
    let local = LOCAL.with(|l| l.borrow().as_deref() == Some(step));
    if local || configured() == Some(step) {
        crate::info!(1, "{ENV}: failing at step {step}");
        return Err(Injected {
            step: step.to_string(),
        });
    }
    Ok(())
}

/// The step name of the n-th remote syscall (counting from 1).
pub fn remote_syscall_step(n: u32) -> String {
    format!("remote-syscall-{n}")
}

/// While the returned guard lives, [`point`] fails at `step` on the calling thread.
pub fn inject_here(step: &str) -> LocalInjection {
    LOCAL.with(|l| *l.borrow_mut() = Some(step.to_string()));
    LocalInjection {
        _not_send: std::marker::PhantomData,
    }
}

/// Ends a thread-local injection when dropped.
#[must_use = "the injection ends when the guard is dropped"]
pub struct LocalInjection {
    /// The injection belongs to one thread.
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for LocalInjection {
    fn drop(&mut self) {
        LOCAL.with(|l| *l.borrow_mut() = None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_injection_fires_only_at_its_step_and_only_on_its_thread() {
        assert!(point("pages").is_ok());
        let guard = inject_here("pages");
        assert!(point("seize").is_ok());
        let err = point("pages").unwrap_err();
        assert_eq!(err.step, "pages");
        assert!(err.to_string().contains("injected failure at pages"));
        std::thread::spawn(|| assert!(point("pages").is_ok()))
            .join()
            .unwrap();
        drop(guard);
        assert!(point("pages").is_ok());
        assert_eq!(remote_syscall_step(3), "remote-syscall-3");
    }
}
