"""TOML configuration files (dose schedules, prior bounds), read with errors that name the file."""

from __future__ import annotations

import os
import tomllib
from typing import Any


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The document of the TOML file at ``path``.

    Raises:
        ValueError: the file is missing, unreadable, not UTF-8 or not valid TOML; the message names the file.
    """
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{path}: not valid TOML ({error})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not valid TOML (not UTF-8 text)") from None
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found") from None
    except OSError as error:
        raise ValueError(f"{path}: cannot read it ({error.strerror or error})") from None
