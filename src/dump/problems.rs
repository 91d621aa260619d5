//! Gathering refusals: a dump names every task, fd and mapping it cannot take in one message,
//! so the steps that find them go on past the first one and report them together.
//!
//! Only refusals (state crest cannot dump) are gathered; any other error (a failed system call,
//! a process that vanished) ends the step at once, as it says nothing about the next thing.

use super::DumpError;

/// Whether `e` is a refusal: the process holds something crest cannot dump, as opposed to a
/// failure of crest's own work.
pub fn is_refusal(e: &DumpError) -> bool {
    matches!(
        e,
        DumpError::Seccomp { .. }
            | DumpError::ThreadCredentials { .. }
            | DumpError::ThreadState { .. }
            | DumpError::Vfork { .. }
            | DumpError::SigtrapIgnored { .. }
            | DumpError::Root { .. }
            | DumpError::UnsupportedMapping { .. }
            | DumpError::UnsupportedFd { .. }
            | DumpError::Cwd { .. }
            | DumpError::Exe { .. }
            | DumpError::PendingSigtrap { .. }
            | DumpError::Namespace { .. }
            | DumpError::TimeNamespace { .. }
            | DumpError::Terminal { .. }
            | DumpError::SharedBetweenProcesses { .. }
            | DumpError::SharedAioRing { .. }
            | DumpError::TreeLayout { .. }
            | DumpError::Refused { .. }
            | DumpError::UnsupportedIpc { .. }
            | DumpError::Settings(crate::pstate::StateError::Refused { .. })
            | DumpError::Locks(
                crate::files::locks::LockError::Unsupported { .. }
                    | crate::files::locks::LockError::Unattributed { .. }
            )
    )
}

/// The refusals found so far.
#[derive(Default)]
pub struct Problems(Vec<DumpError>);

impl Problems {
    pub fn new() -> Problems {
        Problems::default()
    }

    /// The value of a step that worked; `None` after recording a refusal; any other error is
    /// returned.
    pub fn take<T>(&mut self, r: Result<T, DumpError>) -> Result<Option<T>, DumpError> {
        match r {
            Ok(v) => Ok(Some(v)),
            Err(e) if is_refusal(&e) => {
                self.0.push(e);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// `Ok` when nothing was refused; the refusal itself when there is one; otherwise every
    /// problem in one [`DumpError::Refused`], a refusal that already lists several flattened
    /// into it.
    pub fn finish(mut self) -> Result<(), DumpError> {
        if self.0.len() <= 1 {
            return self.0.pop().map_or(Ok(()), Err);
        }
        let mut problems = Vec::new();
        for e in self.0 {
            match e {
                DumpError::Refused { problems: inner } => problems.extend(inner),
                e => problems.push(e.to_string()),
            }
        }
        Err(DumpError::Refused { problems })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd(pid: i32, fd: i32) -> DumpError {
        DumpError::UnsupportedFd {
            pid,
            fd,
            what: "an anonymous inode ([eventfd])".into(),
        }
    }

    #[test]
    fn refusals_are_gathered_and_flattened() {
        let mut p = Problems::new();
        assert_eq!(p.take(Ok::<_, DumpError>(5)).unwrap(), Some(5));
        assert!(p.take::<()>(Err(fd(10, 3))).unwrap().is_none());
        assert!(p
            .take::<()>(Err(DumpError::Refused {
                problems: vec!["a".into(), "b".into()]
            }))
            .unwrap()
            .is_none());
        match p.finish() {
            Err(DumpError::Refused { problems }) => {
                assert_eq!(problems.len(), 3, "{problems:?}");
                assert!(problems[0].contains("process 10: fd 3"), "{}", problems[0]);
                assert_eq!(problems[1..], ["a", "b"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn one_refusal_is_returned_as_it_is_and_other_errors_stop_at_once() {
        let mut p = Problems::new();
        p.take::<()>(Err(fd(10, 3))).unwrap();
        assert!(matches!(
            p.finish(),
            Err(DumpError::UnsupportedFd { pid: 10, fd: 3, .. })
        ));
        let mut p = Problems::new();
        let err = p
            .take::<()>(Err(DumpError::NoSuchProcess { pid: 7 }))
            .unwrap_err();
        assert!(matches!(err, DumpError::NoSuchProcess { pid: 7 }));
        assert!(p.finish().is_ok(), "the other error was not recorded");
        assert!(Problems::new().finish().is_ok());
    }
}
