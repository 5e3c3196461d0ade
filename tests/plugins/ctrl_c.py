"""A plugin slow to import, interrupted by a real SIGINT (what Ctrl-C sends) while it
loads: the program must stop, as a Ctrl-C stops it anywhere else."""

import os
import signal
import time

os.kill(os.getpid(), signal.SIGINT)
time.sleep(30)  # the signal's handler interrupts this sleep
