"""The shipped case files (TOML), one per model; read through harness.cases."""
