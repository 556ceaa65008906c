"""The command lines' --help: each option's default shown where it tells something.

argparse's ArgumentDefaultsHelpFormatter appends `(default: X)` to every option: `--no-progress (default: True)`
for a switch that turns progress off, `(default: None)` for options whose help already says what happens when they
are not given, a second default after the one the help names. This one appends it only to options that take a
value, whose default is set, and whose help does not speak of its default already.
"""

from __future__ import annotations

import argparse


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """ArgumentDefaultsHelpFormatter without the defaults of switches, of unset options, and those already told."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            action.nargs == 0  # a switch (store_true / store_false / count / help / version)
            or default is None
            or default is argparse.SUPPRESS
            or default in ([], ())
            or "default" in text.lower()
        ):
            return action.help
        return super()._get_help_string(action)
