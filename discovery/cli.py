"""What every command-line entry point shares: flags that fall back to environment variables,
logging set-up, and one place that turns SIGTERM/SIGINT into a clean shutdown."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any

from discovery.metrics import ListenError

EXIT_OK, EXIT_FATAL, EXIT_USAGE = 0, 1, 2


class EnvParser(argparse.ArgumentParser):
    """An ArgumentParser whose options read their default from an environment variable of
    `environ` (passed in by the entry point: `os.environ`; a test passes its own)."""

    def __init__(self, *, environ: Mapping[str, str], **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(**kwargs)
        self.environ = environ
        self.env_of: dict[str, str] = {}  # option string -> its environment variable (for the docs)

    def option(self, *flags: str, env: str, default: Any = None, type: Callable[[str], Any] = str,
               help: str, secret: bool = False, **kwargs: Any) -> None:
        self.env_of.update(dict.fromkeys(flags, env))
        raw = self.environ.get(env)
        if raw is not None and raw != "":
            try:
                default = type(raw)
            except (TypeError, ValueError) as error:
                self.error(f"environment variable {env}={raw!r}: {error}")
            choices = kwargs.get("choices")
            if choices is not None and default not in choices:
                self.error(f"environment variable {env}={raw!r}: want one of {', '.join(map(str, choices))}")
        shown = "none" if default in (None, "") else "set" if secret else str(default)  # never print a secret
        shown = shown.replace("%", "%%")  # argparse %-formats help strings
        self.add_argument(*flags, default=default, type=type, help=f"{help} [env {env}; default {shown}]",
                          **kwargs)

    def switch(self, *flags: str, env: str, help: str) -> None:
        self.env_of.update(dict.fromkeys(flags, env))
        raw = self.environ.get(env, "").strip().lower()
        if raw not in ("", "0", "1", "true", "false", "yes", "no"):
            self.error(f"environment variable {env}={raw!r}: want true or false")
        self.add_argument(*flags, action="store_true", default=raw in ("1", "true", "yes"),
                          help=f"{help} [env {env}]")


def consul_options(parser: EnvParser) -> None:
    """--consul, --token and --token-file, read from the variables Consul's own CLI reads."""
    parser.option("--consul", env="CONSUL_HTTP_ADDR", default="http://127.0.0.1:8500", metavar="URL",
                  help="Consul agent HTTP API address")
    parser.option("--token", env="CONSUL_HTTP_TOKEN", default=None, secret=True,
                  help="Consul ACL token (prefer --token-file)")
    parser.option("--token-file", env="CONSUL_HTTP_TOKEN_FILE", default=None, metavar="FILE",
                  help="file holding the Consul ACL token, read at start")


def consul_token(token: str | None, token_file: str | None) -> str | None:
    """The ACL token from --token or --token-file (not both: which one wins would be a guess)."""
    if token and token_file:
        raise ValueError("give --token or --token-file, not both")
    if not token_file:
        return token or None
    try:
        text = Path(token_file).read_text().strip()
    except OSError as error:
        raise ValueError(f"--token-file {token_file}: {error.strerror or error}") from error
    if not text or any(c.isspace() or not c.isprintable() for c in text):
        raise ValueError(f"--token-file {token_file}: want one token on one line")
    return text


def positive_seconds(text: str) -> float:
    """Seconds as `1.5`, `250ms`, `2s` or `1m`."""
    value = text.strip().lower()
    for suffix, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0)):
        if value.endswith(suffix):
            number = float(value.removesuffix(suffix)) * scale
            break
    else:
        number = float(value)
    if not number >= 0 or number == float("inf"):
        raise ValueError(f"{text!r} is not a non-negative duration")
    return number


def config_word(text: str) -> str:
    """A value written into haproxy.cfg as one word (an address, a path, a user): nothing that
    could end the word or the line and smuggle in a directive."""
    if not text or any(c.isspace() or c in "#\"'\\" for c in text):
        raise ValueError(f"{text!r}: want one word, without spaces, quotes, '#' or backslashes")
    return text


def listen_address(text: str) -> str | None:
    """`host:port`, `:port` (every address) or `off`."""
    if text.strip().lower() in ("off", "none", ""):
        return None
    host, sep, number = text.rpartition(":")
    if not sep or not number.isdigit() or not 0 < int(number) < 65536 or any(c.isspace() for c in host):
        raise ValueError(f"{text!r} is not host:port, :port or off")
    return text


def setup_logging(level: str) -> None:
    """One format for every line; calling it again only changes the level."""
    logging.basicConfig(
        level=level.upper(), stream=sys.stderr,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    logging.getLogger().setLevel(level.upper())


def run(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run `main` until it returns or a SIGTERM/SIGINT arrives, which cancels it cleanly."""

    async def supervised() -> int:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        stopping = False

        def stop(signum: int) -> None:
            nonlocal stopping
            if not stopping:
                stopping = True
                logging.getLogger("discovery").info("%s received: stopping", signal.Signals(signum).name)
                task.cancel()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop, signum)
        try:
            return await main()
        except asyncio.CancelledError:
            if stopping:
                return EXIT_OK
            raise
        except ListenError as error:
            logging.getLogger("discovery").error("fatal: %s", error)
            return EXIT_FATAL

    return asyncio.run(supervised())
