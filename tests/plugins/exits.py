"""A plugin that calls sys.exit(0) while it is imported: the registry must report it as a
plugin failure, and `fusebench check` must neither stop there nor pass."""

import sys

sys.exit(0)
