"""When a command began: a command's wall time and `--budget` count from here, so the seconds
spent importing torch and checking the data count against a budget too."""

import time

LOADED_AT = time.perf_counter()
"""When asymco began to import."""
_commands = 0


def command_started() -> float:
    """The start of the command now beginning: asymco's import for a process's first command
    (`asymco train ...`), now for later ones (e.g. `cli.main` called again in one process)."""
    global _commands
    _commands += 1
    return LOADED_AT if _commands == 1 else time.perf_counter()
