"""The `cag` command line."""
