"""The one exception type that means "the user gave us something we cannot use"."""

from asymco.text import printable


class UserError(ValueError):
    """Bad input from a user: the CLI prints the message as one sentence and exits with status 2.

    The message must name the problem and, where there is one, the fix. It often quotes a
    path, a class name or a value the user gave, so its control characters are escaped here,
    once for every message: a hostile name cannot reach the terminal through an error.
    """

    def __init__(self, *args: object) -> None:
        super().__init__(*(printable(a) if isinstance(a, str) else a for a in args))


class PreemptedError(Exception):
    """The run was asked to stop (SIGTERM, as schedulers send before preempting a job) and saved
    a checkpoint where it stopped; `--resume` continues it exactly.

    `epoch` and `step` are the checkpoint's position: the 0-based epoch it is in and the steps
    of it already done (step 0: the epoch has not begun, so `epoch` epochs are finished). The
    message counts epochs from 1, as the progress lines do.
    """

    def __init__(self, epoch: int, step: int) -> None:
        if step:
            where = f"in epoch {epoch + 1} after step {step}"
        else:
            where = f"at the end of epoch {epoch}" if epoch else "before epoch 1"
        super().__init__(f"stopped by SIGTERM {where}; checkpoint saved")
        self.epoch, self.step = epoch, step
        self.run_dir: object = None
        """The run directory to resume (set by `api.train`)."""
