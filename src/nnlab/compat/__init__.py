"""The only modules that touch other libraries' private APIs (Lightning's loop internals, Hydra's
config loader), each with a version check and a test against the installed version
(tests/test_compat.py): upgrading a library means reading these two files."""
