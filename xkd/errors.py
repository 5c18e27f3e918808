"""User-facing errors.

A :class:`UserError` is a mistake in the input (config, paths, names, files). The CLI prints its
one-line message to stderr and exits with code 2, without a traceback.
"""

from __future__ import annotations

import os
import sys
from typing import Callable


class UserError(Exception):
    """A mistake the user can fix; the message is one line naming what is wrong and how to fix it."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class ConfigError(UserError):
    """An invalid experiment file: ``path`` is the dotted field path (e.g. ``students[1].params.T``)."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


class UnknownNameError(UserError):
    """A name that is not registered; lists what is allowed."""

    def __init__(self, kind: str, name: str, allowed: list[str], path: str = "") -> None:
        self.kind, self.name, self.allowed = kind, name, allowed
        where = f"{path}: " if path else ""
        super().__init__(f"{where}unknown {kind} '{name}'; allowed: {', '.join(allowed)}")


class NotApplicable(UserError):
    """A metric or explainer that does not apply to this input, for a named reason (e.g. a model
    without parameter layers for the randomisation check). The report lists it as not applicable
    with the reason; any other exception while computing a metric fails the report."""


class TrainingDiverged(UserError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


def warn(message: str) -> None:
    """Print ``warning: <message>`` as one line to stderr, on rank 0 only (``RANK`` of torchrun).

    For settings that run but probably not as meant; the caller decides how often (e.g. once per
    student), so a warning never repeats per step."""
    if os.environ.get("RANK", "0") == "0":
        print("warning: " + " ".join(str(message).split()), file=sys.stderr, flush=True)


def run_cli(body: Callable[[], int], interrupted: str, after_fault: str) -> int:
    """The exit code of a CLI's ``body()``, or one line on stderr and its code: a
    :class:`UserError` (its ``exit_code``), Ctrl-C (130, ``interrupted; <interrupted>``) or an
    ``OSError`` outside xkd.io's writers (2: file, cause and errno, then ``after_fault``).
    Shared by ``xkd.run``, ``xkd.report`` and ``xkd.reproduce``."""
    try:
        return body()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"interrupted; {interrupted}", file=sys.stderr)
        return 130
    except OSError as e:  # a full disk, a read-only folder, a permission: one line too
        where = f" {e.filename}" if getattr(e, "filename", None) else ""
        code = f" [errno {e.errno}]" if e.errno else ""
        print(f"error:{where}: {e.strerror or e}{code}; {after_fault}", file=sys.stderr)
        return 2
