"""How the command line fails: one line on stderr and an exit code, never a traceback.

Exit codes: 2 for anything the user can fix (a WattlessError, a bad option, the environment), 130 when
interrupted, 1 for a bug.
"""

from __future__ import annotations

import typer
from rich.text import Text

from wattless.cli.console import err_console
from wattless.errors import WattlessError

try:  # typer runs its own copy of click; its exceptions are what the command line raises
    from typer._click.exceptions import ClickException, NoArgsIsHelpError
except ImportError:  # older typer: plain click
    from click.exceptions import ClickException, NoArgsIsHelpError

__all__ = ["print_error", "fail", "run"]

_OUT_OF_MEMORY = ("out of memory: the model, its inputs or a setting (--input-shape, a batch size) is too large "
                  "for this machine")


def print_error(message: str) -> None:
    """One line on stderr; the message is text (it quotes paths, specs and names the user wrote)."""
    line = " ".join(str(message).split())
    err_console.print(Text.assemble(("error:", "bold red"), " ", line), highlight=False, soft_wrap=True)


def fail(message: str) -> None:
    """Refuse a request from inside a verb: the message, exit code 2."""
    print_error(message)
    raise typer.Exit(code=2)


def run(app: typer.Typer) -> int:
    """Run ``app`` on sys.argv and return its exit code; every failure is printed as one line."""
    try:
        code = app(standalone_mode=False)
    except NoArgsIsHelpError as exc:
        exc.show()  # the help, as `wattless` alone always printed it
        return exc.exit_code
    except ClickException as exc:  # a bad option or argument: one line too, with the way to the help
        print_error(_usage_message(exc))
        return exc.exit_code
    except (Exception, KeyboardInterrupt) as exc:
        message, code = _explain(exc)
        print_error(message)
        return code
    return code if isinstance(code, int) else 0


def _usage_message(exc: ClickException) -> str:
    ctx = getattr(exc, "ctx", None)
    where = f"wattless {ctx.info_name}" if ctx is not None and ctx.parent is not None else "wattless"
    return f"{exc.format_message()} (see `{where} --help`)"


def _explain(exc: BaseException) -> tuple[str, int]:
    if isinstance(exc, (typer.Abort, KeyboardInterrupt)):
        return "interrupted", 130
    if isinstance(exc, WattlessError):
        return str(exc), 2
    if isinstance(exc, MemoryError):
        return _OUT_OF_MEMORY, 2
    if isinstance(exc, OSError):  # the environment: a full disk, a permission, a path that went away
        return f"{type(exc).__name__}: {exc}", 2
    # a last resort: specific checks raise WattlessError before getting here
    return (f"unexpected {type(exc).__name__}: {exc} (a bug in wattless or in user code it ran; "
            "please report it with the command)"), 1
