"""A plugin that raises KeyboardInterrupt while it is imported, with no Ctrl-C pressed: a
plugin failure like any other, not a reason to stop the program."""

raise KeyboardInterrupt
