"""When asymco began to import: a command's wall time and `--budget` count from here, so the
seconds spent importing torch and checking the data count against a budget too."""

import time

LOADED_AT = time.perf_counter()
