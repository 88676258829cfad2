"""Root conftest: pytester (for inner test runs) must be enabled here, at the rootdir.

The project's own plugin needs no registration: it is installed, and pytest loads it through
its ``pytest11`` entry point, exactly as in a user's project.
"""

pytest_plugins = ["pytester"]
