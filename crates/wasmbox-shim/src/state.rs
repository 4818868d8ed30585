//! The lifecycle of one container as a state machine. Every verb asks the
//! state whether it may act, and an illegal step is a precise error.

use crate::error::ShimError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// The instance process is prepared and waits for Start.
    Created,
    /// The guest runs.
    Running,
    /// The container's processes are frozen (cgroup freezer).
    Paused,
    /// The instance process has exited (or was never started and was killed).
    Stopped,
}

impl TaskState {
    pub fn can_start(self) -> bool {
        self == TaskState::Created
    }
    pub fn can_kill(self) -> bool {
        self != TaskState::Stopped
    }
    pub fn can_delete(self) -> bool {
        !matches!(self, TaskState::Running | TaskState::Paused)
    }
    pub fn can_pause(self) -> bool {
        self == TaskState::Running
    }
    pub fn can_resume(self) -> bool {
        self == TaskState::Paused
    }

    fn refuse(self, id: &str, verb: &str) -> ShimError {
        ShimError::FailedPrecondition { id: id.to_string(), reason: format!("cannot {verb} a task that is {self:?}") }
    }

    pub fn check_start(self, id: &str) -> Result<(), ShimError> {
        if self.can_start() {
            Ok(())
        } else {
            Err(self.refuse(id, "start"))
        }
    }
    pub fn check_pause(self, id: &str) -> Result<(), ShimError> {
        if self.can_pause() {
            Ok(())
        } else {
            Err(self.refuse(id, "pause"))
        }
    }
    pub fn check_resume(self, id: &str) -> Result<(), ShimError> {
        if self.can_resume() {
            Ok(())
        } else {
            Err(self.refuse(id, "resume"))
        }
    }
    pub fn check_delete(self, id: &str) -> Result<(), ShimError> {
        if self.can_delete() {
            Ok(())
        } else {
            Err(self.refuse(id, "delete"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TaskState::*;

    #[test]
    fn transitions() {
        assert!(Created.can_start() && !Running.can_start() && !Stopped.can_start());
        assert!(Created.can_kill() && Running.can_kill() && !Stopped.can_kill());
        assert!(Created.can_delete() && !Running.can_delete() && Stopped.can_delete() && !Paused.can_delete());
        assert!(Running.can_pause() && !Paused.can_pause() && !Created.can_pause() && !Stopped.can_pause());
        assert!(Paused.can_resume() && !Running.can_resume());
        assert!(Paused.can_kill());
        let e = Running.check_delete("c1").unwrap_err().to_string();
        assert!(e.contains("c1") && e.contains("Running"), "{e}");
        assert!(Stopped.check_start("c1").is_err());
    }
}
