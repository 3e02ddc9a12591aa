"""What every command-line script shares: its --help shows the module text verbatim and every default."""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The script's docstring as written, and `(default: ...)` after each option that has one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or "default:" in text or action.default in (None, argparse.SUPPRESS, False) \
                or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def make_parser(doc: str | None) -> argparse.ArgumentParser:
    """An ArgumentParser whose description is `doc` (the script's module docstring)."""
    return argparse.ArgumentParser(description=doc, formatter_class=HelpFormatter)
