"""A plugin whose import fails: the registry must report it and load everything else."""

import fusebench_module_that_does_not_exist  # noqa: F401
