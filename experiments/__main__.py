"""``python -m experiments <command> [flags]``: parse the command's config once, run its ``main``.

Errors in the user's input become one line on stderr and exit status 2, never a traceback: a
:class:`~experiments.runner.UserError` (options are checked up front, damaged files refused),
argparse's own complaints, and a ValueError / TypeError raised by the library during a run, an
OSError or a failed allocation (printed with the exception's type, so a genuine bug stays
visible). Other exceptions are bugs and keep their traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .config import COMMANDS, UserError

__all__ = ["MODULES", "build_parser", "main"]

#: command -> the module that defines its config (a :class:`~experiments.runner.Config`) and ``main``.
MODULES = {
    "vae": "experiments.vae",
    "gradients": "experiments.gradients",
    "binary": "experiments.binary",
    "l0": "experiments.l0",
    "subsets": "experiments.subsets",
    "sort": "experiments.sort",
    "dvae": "experiments.dvae",
    "bench": "benchmarks.bench",
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad command line gives one line, not the usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")


def _one_line(text: object) -> str:
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command (with ``only``, just that command's module is imported)."""
    parser = _Parser(prog="python -m experiments", description="The gumbelkit lab: experiments and benchmarks.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in MODULES.items():
        if only is not None and name != only:
            sub.add_parser(name)
            continue
        importlib.import_module(module)
        cls = COMMANDS[name]
        cls.add_arguments(sub.add_parser(name, help=cls.HELP, description=cls.HELP))
    return parser


def _out_of_memory(exc: BaseException) -> bool:
    import torch

    text = str(exc)
    return isinstance(exc, (MemoryError, torch.OutOfMemoryError)) or (
        isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text.lower())
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in MODULES else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2

    def fail(message: object) -> int:
        print(f"experiments {args.command}: error: {_one_line(message)}", file=sys.stderr)
        return 2

    try:
        cfg = COMMANDS[args.command].from_args(args)
        importlib.import_module(MODULES[args.command]).main(cfg)
    except UserError as exc:
        return fail(exc)
    except KeyboardInterrupt:
        print(f"experiments {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError) as exc:  # the library refused a value during the run
        return fail(f"{type(exc).__name__}: {exc}")
    except OSError as exc:
        where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
        return fail(f"{type(exc).__name__}{where}: {exc.strerror or exc}")
    except (MemoryError, RuntimeError) as exc:
        if not _out_of_memory(exc):
            raise
        return fail(f"out of memory ({type(exc).__name__}: {exc}); try smaller sizes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
