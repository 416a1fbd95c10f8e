"""The command lines' way with a user's bad input: one line on stderr, exit status 2.

    if __name__ == "__main__":
        cli.run(main)          # instead of absl's app.run(main)

A bad file, folder, video, question or config key raises an error whose message
names it (``ValueError``, ``OSError`` and their kin: a config key, a missing or
unreadable file, an undecodable video, a checkpoint of another config, more bad
data than ``data.max_bad_fraction`` allows). ``run`` prints that message's first
line as ``<program>: error: ...`` and exits with status 2, without a traceback;
``--debug`` shows the traceback instead. A bad flag or ``--config.*`` override is the
same kind of error and exits the same way, as does a wrong use of the command
(``app.UsageError``: absl alone would print the whole help and exit 1). Everything else
(a bug, a lost peer of a multi-host run) keeps its traceback.
"""

from __future__ import annotations

import logging as py_logging
import sys
from collections.abc import Callable

from absl import app, flags, logging

from data_pipelines import input_pipeline
from frejax import config_lib

_DEBUG = flags.DEFINE_bool("debug", False, "Show the traceback of an input error too.")

# What a user's input raises; the messages name the file, field or config key.
INPUT_ERRORS = (ValueError, OSError, KeyError, input_pipeline.BadInputError)
# A long question or file name is not echoed whole.
MAX_MESSAGE = 300


def one_line(error: BaseException) -> str:
    """``error``'s message on one line (its lines joined), shortened to ``MAX_MESSAGE``."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    text = " ".join(lines) if lines else type(error).__name__
    if isinstance(error, KeyError) and text.startswith(("'", '"')):
        text = text.strip("'\"")
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE - 3] + "..."


class _QuietLibraries(py_logging.Filter):
    """Drops INFO chatter of Orbax and Grain (they log every save stage); warnings pass."""

    def filter(self, record: py_logging.LogRecord) -> bool:
        noisy = ("/orbax/", "/grain/", "/etils/")
        return record.levelno >= py_logging.WARNING or not any(
            n in record.pathname for n in noisy)


def quiet_libraries() -> None:
    """Keeps the libraries' INFO lines out of a command's output (their warnings stay)."""
    logging.get_absl_handler().addFilter(_QuietLibraries())


def command_line(module: str, names: tuple[str, ...], values: flags.FlagValues | None = None) -> str:
    """``python -m <module>`` with every flag of ``names`` the user gave, as given: the
    command a report names so that it can be run again (``values``: flags.FLAGS)."""
    f = flags.FLAGS if values is None else values
    given = [f"--{n}={f[n].serialize().split('=', 1)[-1]}" for n in names if f[n].present]
    return " ".join([f"python -m {module}"] + given)


def run(main: Callable[[list[str]], object], program: str = "") -> None:
    """``app.run(main)`` with input errors as one line on stderr and exit status 2."""
    name = program or (sys.argv[0] if sys.argv else "frejax")

    def usage_error(e: BaseException):
        """A wrong flag or use of the command: one line, exit status 2."""
        print(f"{name}: error: {one_line(e)} (--helpfull lists the flags)", file=sys.stderr)
        sys.exit(2)

    def guarded(argv: list[str]):
        try:
            return main(argv)
        except app.UsageError as e:  # absl would print the whole help and exit 1
            usage_error(e)
        except INPUT_ERRORS as e:
            if _DEBUG.value:
                raise
            print(f"{name}: error: {one_line(e)} (--debug shows the traceback)",
                  file=sys.stderr)
            sys.exit(2)

    def parse(argv: list[str]) -> list[str]:
        try:
            config_lib.check_override_flags(argv)
            return flags.FLAGS(argv)
        except (flags.Error, config_lib.UnknownKeyError) as e:
            usage_error(e)

    app.run(guarded, flags_parser=parse)
