"""Deliberately broken plugins used by the tests (loaded through FUSEBENCH_PLUGINS)."""
