"""The one exception type that means "the user gave us something we cannot use"."""


class UserError(ValueError):
    """Bad input from a user: the CLI prints the message as one sentence and exits with status 2.

    The message must name the problem and, where there is one, the fix.
    """


class PreemptedError(Exception):
    """The run was asked to stop (SIGTERM, as schedulers send before preempting a job) and saved
    a checkpoint where it stopped; `--resume` continues it exactly."""

    def __init__(self, epoch: int, step: int) -> None:
        super().__init__(f"stopped by SIGTERM at epoch {epoch}, step {step}; checkpoint saved")
        self.epoch, self.step = epoch, step
        self.run_dir: object = None
        """The run directory to resume (set by `api.train`)."""
