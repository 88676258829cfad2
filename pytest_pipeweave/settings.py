"""The plugin's settings, resolved from the command line, the environment and the ini file."""

from __future__ import annotations

from dataclasses import dataclass

from pipeweave_db import mask_url
from pytest_pipeweave.servers import DEFAULT_IMAGE


@dataclass(frozen=True, repr=False)
class Settings:
    """Which server to use and how; ``url`` may hold a password, so repr masks it."""

    backend: str = "auto"
    url: str | None = None
    image: str = DEFAULT_IMAGE
    pg_bin: str | None = None
    keep: bool = False

    def __repr__(self) -> str:
        url = mask_url(self.url) if self.url else None
        return (
            f"Settings(backend={self.backend!r}, url={url!r}, image={self.image!r}, "
            f"pg_bin={self.pg_bin!r}, keep={self.keep})"
        )
