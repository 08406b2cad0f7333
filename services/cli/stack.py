"""``gensearch up``: the whole stack in one foreground process.

One asyncio process serves the four gRPC services in-process (each service's own
``build_server``); two child processes do what Python should not: a Redis-protocol server
(AOF in ``<data dir>/redis``) and the local LLM server (llama.cpp's ``llama-server`` with the
bundled SmolLM2 model), started by the same dev-only launchers (``services.devlaunch``)
a service run alone uses. Each part is replaceable by configuration: ``--redis-url``,
``--qdrant-url``, ``--llm-provider``/``--llm-base-url`` (then no local LLM is started).
Every service reads the rest of its settings from its own ``GENSEARCH_<SERVICE>_*``
variables, as it does when run alone.

Start order: Redis, the LLM server and the embedding model (side by side), then memory,
retrieval and generation, then the gateway (which needs their addresses). Ctrl-C or SIGTERM
stops them in the reverse order: the gateway first, Redis and the LLM server last. Data
stays in the data dir, so the next ``up`` finds its collections and conversations.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import logging
import os
import secrets
import shlex
import signal
import socket
import sys
import time
import warnings
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

import grpc
from pydantic import SecretStr, ValidationError
from pydantic_settings import SettingsError

from services.cli.client import CliError, check_health
from services.cli.output import command_name, note
from services.common.hostport import bind_problem, join_host_port
from services.common.logs import redacted_url

if TYPE_CHECKING:
    from services.common.server import GrpcServer
    from services.common.settings import CommonSettings
    from services.generation.settings import GenerationSettings
    from services.memory.settings import MemorySettings
    from services.retrieval.settings import RetrievalSettings

STACK_FILE = "stack.json"
# Held (flock) by the ``up`` using a data dir, for as long as it runs.
LOCK_FILE = "up.lock"
S = TypeVar("S", bound="CommonSettings")
PARTS = ("memory", "retrieval", "generation")  # what the gateway calls
GRACE_SECONDS = 5.0
DEFAULT_DEMO_LIMIT = 300
# How a busy gateway port is moved: `make run` takes no flags, so the variable too.
GATEWAY_PORT_OPTION = "--port or GENSEARCH_GATEWAY_PORT"


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise CliError(f"{name} must be an integer, not {raw!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    parser.add_argument(
        "--data-dir",
        default=env("GENSEARCH_DATA_DIR", "data"),
        help="where Redis's AOF and the Qdrant data live (env GENSEARCH_DATA_DIR, default ./data)",
    )
    parser.add_argument(
        "--host",
        default=env("GENSEARCH_HOST", "127.0.0.1"),
        help="bind address of every part (env GENSEARCH_HOST, default 127.0.0.1)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=_env_int("GENSEARCH_GATEWAY_PORT", 50050),
        help="gateway port (env GENSEARCH_GATEWAY_PORT, default 50050; 0 = any free port)",
    )
    parser.add_argument(
        "--redis-url",
        default=env("GENSEARCH_MEMORY_REDIS_URL", ""),
        help="use this Redis instead of starting one (env GENSEARCH_MEMORY_REDIS_URL)",
    )
    parser.add_argument(
        "--qdrant-url",
        default=env("GENSEARCH_RETRIEVAL_QDRANT_URL", ""),
        help="use this Qdrant server instead of the embedded engine "
        "(env GENSEARCH_RETRIEVAL_QDRANT_URL)",
    )
    parser.add_argument(
        "--llm-provider",
        default=env("GENSEARCH_GENERATION_DEFAULT_PROVIDER", "local"),
        help="default LLM provider: local (started here), openai, anyscale, vllm, ollama … "
        "(env GENSEARCH_GENERATION_DEFAULT_PROVIDER)",
    )
    parser.add_argument(
        "--llm-base-url",
        default="",
        help="OpenAI-compatible base URL of the provider, e.g. http://127.0.0.1:8000/v1 "
        "(then no local LLM server is started)",
    )
    parser.add_argument("--llm-model", default="", help="the provider's default model")
    parser.add_argument(
        "--demo",
        action="store_true",
        help="load the demo corpus (once) and run a generative search and a conversation",
    )
    parser.add_argument(
        "--demo-limit",
        type=int,
        # All 525 passages take 30-85 s to embed on 2 busy cores; 300 keep the first answer
        # quick and still span every topic (see docs/cli.md).
        default=_env_int("GENSEARCH_DEMO_LIMIT", DEFAULT_DEMO_LIMIT),
        help=f"import at most this many demo passages (env GENSEARCH_DEMO_LIMIT, default "
        f"{DEFAULT_DEMO_LIMIT}; 0 = all of them)",
    )
    parser.add_argument(
        "--demo-max-tokens",
        type=int,
        default=_env_int("GENSEARCH_DEMO_MAX_TOKENS", 120),
        help="longest demo answer in tokens (env GENSEARCH_DEMO_MAX_TOKENS, default 120)",
    )
    parser.add_argument(
        "--log-level",
        default=env("GENSEARCH_LOG_LEVEL", "WARNING"),
        help="service logs on stderr (env GENSEARCH_LOG_LEVEL, default WARNING)",
    )


def say(text: str) -> None:
    print(text, flush=True)


def _quiet_libraries() -> None:
    # The embedding model is on disk; progress bars and hub lookups would only add noise.
    for name, value in (
        ("HF_HUB_OFFLINE", "1"),
        ("TRANSFORMERS_OFFLINE", "1"),
        ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
        ("TRANSFORMERS_VERBOSITY", "error"),
        ("TQDM_DISABLE", "1"),
        ("TOKENIZERS_PARALLELISM", "false"),
    ):
        os.environ.setdefault(name, value)
    # Library deprecation notices are for their developers, not for someone running a demo.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


@dataclass
class Part:
    name: str
    address: str
    service: str
    server: GrpcServer


@dataclass
class Stack:
    """The running parts, stopped in reverse start order by ``close``."""

    args: argparse.Namespace
    data_dir: Path
    token: str
    parts: dict[str, Part] = field(default_factory=dict)
    api_key: str = ""
    # Who that key is, for people: "alice (tenant acme)" ("" with no keys).
    api_user: str = ""
    # Child processes we started (anything with a ``running`` property), watched while up.
    children: dict[str, Any] = field(default_factory=dict)
    _exit: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    @property
    def gateway_address(self) -> str:
        return self.parts["gateway"].address

    def push(self, label: str, stop: Callable[[], Awaitable[Any]]) -> None:
        async def stopping() -> None:
            started = time.perf_counter()
            try:
                await stop()
            except Exception as err:
                say(f"  {label:<11} stop failed: {type(err).__name__}: {err}")
                return
            say(f"  {label:<11} stopped ({time.perf_counter() - started:.1f}s)")

        self._exit.push_async_callback(stopping)

    async def close(self) -> None:
        await self._exit.aclose()


async def start(args: argparse.Namespace) -> Stack:
    """Start every part, in order, printing a line as each is ready.

    On failure (or cancellation) whatever already started is stopped before re-raising.
    """
    from services.common.api_keys import ApiKeyError
    from services.common.logs import configure_logging
    from services.common.otel_environment import otel_problems

    level = args.log_level.upper()
    # As a service alone checks GENSEARCH_LOG_LEVEL: logging's own refusal came out as
    # "error: ValueError: Unknown level: 'LOUD'", naming neither the option nor the variable.
    if level not in logging.getLevelNamesMapping():
        raise CliError(
            "invalid setting: --log-level (GENSEARCH_LOG_LEVEL): "
            "must be DEBUG, INFO, WARNING, ERROR or CRITICAL"
        )
    configure_logging(level, service="gensearch")
    # The OTEL_* variables the services' tracing reads, as each service checks them alone
    # (load_settings): the SDK misread a bad one later, some in a traceback.
    otel = otel_problems()
    if otel:
        raise CliError(f"invalid setting: {'; '.join(otel)}")
    data_dir = _prepare_data_dir(args.data_dir)
    lock = _claim_data_dir(data_dir)
    token = os.environ.get("GENSEARCH_INTERNAL_TOKEN") or secrets.token_urlsafe(32)
    stack = Stack(args=args, data_dir=data_dir, token=token)
    stack._exit.callback(lock.close)  # released last, once Redis has stopped
    try:
        await _start_parts(stack)
    except BaseException as err:
        interrupted = isinstance(err, asyncio.CancelledError)
        if interrupted:
            # Ctrl-C during start-up: said as when the stack is up (the parts' "stopped"
            # lines otherwise followed the terminal's ^C on its line, and nothing said that
            # everything had stopped).
            say("\nstopping (start-up interrupted; what had started stops in order)")
        await stack.close()
        if interrupted:
            say(f"stopped; data kept in {stack.data_dir}")
        if isinstance(err, ValidationError):
            raise CliError(f"invalid setting: {_setting_problems(err)}") from None
        if isinstance(err, ApiKeyError):  # its message names the entry, never a key
            raise CliError(f"invalid API keys: {err}") from None
        if isinstance(err, SettingsError):  # a dict or list variable that is not JSON
            raise CliError(f"invalid setting: {_unparsable_setting(err)}") from None
        raise
    return stack


def _setting_problems(err: ValidationError) -> str:
    """Variable names and messages only: a rejected value may be a secret."""
    from services.common.settings import setting_problem

    classes = {cls.__name__: cls for cls in _settings_classes()}
    cls = classes.get(err.title)
    problems = []
    for e in err.errors(include_input=False, include_url=False):
        if cls is not None:
            problems.append(setting_problem(cls, e["loc"], e["msg"]))
        else:
            field = str(e["loc"][0]) if e["loc"] else ""
            problems.append(f"{field.upper()}: {e['msg']}".removeprefix(": "))
    return "; ".join(problems)


def _unparsable_setting(err: SettingsError) -> str:
    """The variable that is not JSON, as the service reading it names it alone.

    pydantic-settings names only the field (``request_limits``), which every service has:
    the one meant is the service whose variable for it is set and does not parse.
    """
    from services.common.settings import unparsable_field, unparsable_problem

    field = unparsable_field(err)
    classes = [cls for cls in _settings_classes() if field in cls.model_fields]
    for cls in classes:
        for name, named in cls.env_names().items():
            if named == field and name in os.environ and not _is_json(os.environ[name]):
                return unparsable_problem(cls, err)
    return unparsable_problem(classes[0], err) if classes else "a value is not valid JSON"


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _settings_classes() -> tuple[type[CommonSettings], ...]:
    from services.gateway.settings import GatewaySettings
    from services.generation.settings import GenerationSettings
    from services.memory.settings import MemorySettings
    from services.retrieval.settings import RetrievalSettings

    return MemorySettings, RetrievalSettings, GenerationSettings, GatewaySettings


def _prepare_data_dir(name: str) -> Path:
    data_dir = Path(name).expanduser().resolve()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        # Was "error: FileNotFoundError: [Errno 2] …", naming neither option nor variable.
        raise CliError(
            f"--data-dir (GENSEARCH_DATA_DIR) {str(data_dir)!r} cannot be created: "
            f"{err.strerror or type(err).__name__}"
        ) from None
    return data_dir


def _claim_data_dir(data_dir: Path) -> IO[str]:
    """An exclusive lock on the data dir while this ``up`` runs (released when the file is
    closed, or the process dies). A second ``up`` on the same data dir with other ports
    started a second Redis on the first one's append-only file, loaded the models, then
    failed at the embedded Qdrant's write-ahead log with ``Kind(WouldBlock)`` (or, in one
    process, came up on the same files)."""
    handle = (data_dir / LOCK_FILE).open("a", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        pid = read_stack_file(data_dir).get("pid")
        holder = f" (pid {pid})" if isinstance(pid, int) else ""
        raise CliError(
            f"the data dir {data_dir} is in use by another gensearch up{holder}; stop it, "
            "or give this one another --data-dir (GENSEARCH_DATA_DIR); nothing was started"
        ) from None
    return handle


@dataclass(frozen=True, slots=True)
class WantedPort:
    """A port a part of the stack will bind, and how to choose another."""

    what: str  # "gateway port", "memory metrics port"
    port: int  # 0: any free port
    option: str  # "--port", "GENSEARCH_MEMORY_METRICS_PORT"


def busy_ports(host: str, wanted: list[WantedPort]) -> list[WantedPort]:
    """The wanted ports (0 = any free port, never busy) that cannot be bound on ``host``.

    Checked before anything starts: a busy port found by the gRPC server itself is
    reported late (after Redis and the models have loaded) and after gRPC's own log line.
    """
    # As gRPC and the metrics server bind (bind_problem).
    return [want for want in wanted if want.port and bind_problem(host, want.port)]


def _check_ports(args: argparse.Namespace, settings: dict[str, Any]) -> None:
    if not 0 <= args.port <= 65535:
        # Bound as given, 70000 was port 4464 (the socket layer keeps 16 bits).
        raise CliError(f"--port must be 0..65535 (0 = any free port), not {args.port}")
    wanted = [WantedPort("gateway port", args.port, GATEWAY_PORT_OPTION)]
    for name, part in settings.items():
        if name != "gateway":
            wanted.append(WantedPort(f"{name} port", part.port, f"GENSEARCH_{name.upper()}_PORT"))
    for name, part in settings.items():
        option = f"GENSEARCH_{name.upper()}_METRICS_PORT"
        wanted.append(WantedPort(f"{name} metrics port", part.metrics_port, option))
    # The host as the settings hold it: "[::1]" is kept bare, as the servers bind it.
    host = next(iter(settings.values())).host
    # The host first (any free port on it): one that does not resolve, or is no address of
    # this machine, made every wanted port "already in use".
    problem = bind_problem(host, 0)
    if problem:
        raise CliError(
            f"cannot listen on {host}: {problem}; choose another with --host "
            "(GENSEARCH_HOST); nothing was started"
        )
    busy = busy_ports(host, wanted)
    if busy:
        served = [b for b in busy if _listening(host, b.port)]
        held = [b for b in busy if b not in served]
        said = []
        if served:
            ports = ", ".join(f"{b.what} {b.port}" for b in served)
            said.append(f"{ports} (another gensearch running?)")
        if held:
            # 50050-50053 lie in Linux's default range for outgoing connections' ports: a
            # connection of any program may hold one, and a closed one keeps it a minute.
            ports = ", ".join(f"{b.what} {b.port}" for b in held)
            said.append(
                f"{ports} (no server listens on it: a connection of this machine holds it; "
                "one that just closed frees it within a minute)"
            )
        hints = ", ".join(b.option for b in busy)
        raise CliError(
            f"already in use on {host}: {'; '.join(said)}; "
            f"choose others with {hints} (0 = any free port); nothing was started"
        )
    # Free, but wanted by two parts: the second failed once the slow parts had started,
    # said as "address already in use; another gensearch running?".
    twice = _wanted_twice(wanted)
    if twice:
        hints = ", ".join(w.option for w in twice)
        ports = "; ".join(
            f"{' and '.join(w.what for w in twice if w.port == port)} are {port}"
            for port in dict.fromkeys(w.port for w in twice)
        )
        raise CliError(
            f"one port for two parts: {ports}; choose others with {hints} "
            "(0 = any free port); nothing was started"
        )


def _wanted_twice(wanted: list[WantedPort]) -> list[WantedPort]:
    """The wanted ports (0 = any free port, never shared) that two parts or more want."""
    counts = Counter(w.port for w in wanted if w.port)
    return [w for w in wanted if w.port and counts[w.port] > 1]


def _listening(host: str, port: int) -> bool:
    """Whether a server accepts connections on ``host`` and ``port`` (a wildcard host:
    on loopback)."""
    target = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    try:
        with socket.create_connection((target, port), timeout=1):
            return True
    except OSError:
        return False


async def _start_parts(stack: Stack) -> None:
    args = stack.args

    from services.common.settings import warn_unknown_variables
    from services.gateway.__main__ import build_server as build_gateway
    from services.gateway.settings import GatewaySettings
    from services.generation.__main__ import build_server as build_generation
    from services.memory.__main__ import build_server as build_memory
    from services.memory.settings import MemorySettings
    from services.retrieval.__main__ import build_server as build_retrieval
    from services.retrieval.settings import RetrievalSettings

    # Each service reads the rest of its settings from its own namespace, as when run alone.
    shared: dict[str, Any] = {
        "data_dir": stack.data_dir,
        "host": args.host,
        "internal_token": stack.token,
        "log_level": args.log_level.upper(),
    }
    # The dev stack runs one memory process, so its embedded search index (SearchInteractions)
    # is on, by meaning and by keyword; GENSEARCH_MEMORY_SEARCH_INDEX still decides.
    search: dict[str, Any] = (
        {} if "GENSEARCH_MEMORY_SEARCH_INDEX" in os.environ else {"search_index": "hybrid"}
    )
    memory_settings = MemorySettings(**shared, redis_url=SecretStr(args.redis_url), **search)
    # Before anything starts: a malformed key is then the first and only thing said.
    keys = memory_settings.api_key_map()
    retrieval_settings = RetrievalSettings(**shared, qdrant_url=args.qdrant_url)
    generation_settings = _generation_settings(args, shared)
    _check_providers(args, generation_settings)
    gateway_settings = GatewaySettings(**shared, **_tokenize_at(generation_settings))
    _check_ports(
        args,
        {
            "memory": memory_settings,
            "retrieval": retrieval_settings,
            "generation": generation_settings,
            "gateway": gateway_settings,
        },
    )
    say(f"starting gensearch (data in {stack.data_dir})")
    # Before the slow parts: all four run here, so a variable none of them reads is a typo.
    warn_unknown_variables(
        memory_settings, retrieval_settings, generation_settings, gateway_settings
    )
    _warn_if_no_provider_key(generation_settings)
    redis_url, embedder = await _start_backends(
        stack, memory_settings, retrieval_settings, generation_settings
    )
    memory_settings = _updated(memory_settings, redis_url=SecretStr(redis_url))
    stack.api_key = next(iter(keys), "")
    if stack.api_key:
        who = keys[stack.api_key]
        stack.api_user = f"{who.user} (tenant {who.tenant})"

    async def memory() -> GrpcServer:
        return await build_memory(memory_settings)

    async def retrieval() -> GrpcServer:
        return await build_retrieval(
            retrieval_settings,
            metrics_port=retrieval_settings.metrics_port,
            local_embedder=embedder,
        )

    if not generation_settings.redis_url.get_secret_value():
        # Provider limits are counted in the memory service's Redis unless told otherwise.
        generation_settings = _updated(
            generation_settings,
            redis_url=memory_settings.redis_url,
            redis_cluster=memory_settings.redis_cluster,
        )

    async def generation() -> GrpcServer:
        return await build_generation(generation_settings)

    # One at a time: each start is quick, and a failure names its part.
    for name, build in (("memory", memory), ("retrieval", retrieval), ("generation", generation)):
        await _serve(stack, name, build)

    addresses: dict[str, Any] = {f"{name}_addr": stack.parts[name].address for name in PARTS}
    if not gateway_settings.redis_url.get_secret_value():
        # The quotas count in the memory service's Redis unless told otherwise.
        addresses["redis_url"] = memory_settings.redis_url
        addresses["redis_cluster"] = memory_settings.redis_cluster
    gateway_settings = _updated(gateway_settings, **addresses)

    async def gateway() -> GrpcServer:
        return await build_gateway(gateway_settings, port=args.port)

    await _serve(stack, "gateway", gateway)
    await _wait_serving(stack)
    _write_stack_file(stack)
    stack._exit.push_async_callback(_remove_stack_file, stack)


async def _start_backends(
    stack: Stack,
    memory: MemorySettings,
    retrieval: RetrievalSettings,
    generation: GenerationSettings,
) -> tuple[str, Any]:
    """Redis, the local LLM server and the embedding model, side by side (they are slow)."""
    args = stack.args
    tasks: dict[str, asyncio.Task[Any]] = {}
    if not args.redis_url:
        tasks["redis"] = asyncio.create_task(_start_redis(stack, memory))
    if generation.local_llm_autostart:
        tasks["llm"] = asyncio.create_task(_start_llm(stack, generation))
    tasks["embeddings"] = asyncio.create_task(_load_embedder(stack, retrieval))
    try:
        await asyncio.gather(*tasks.values())
    except BaseException:
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        raise
    redis_url = tasks["redis"].result() if "redis" in tasks else args.redis_url
    if "redis" not in tasks:
        say(f"  {'redis':<11} external {redacted_url(args.redis_url)}")
    if "llm" not in tasks:
        where = redacted_url(args.llm_base_url) if args.llm_base_url else "its configured endpoint"
        say(f"  {'llm':<11} external provider {args.llm_provider!r} at {where}")
    if args.qdrant_url:
        say(f"  {'qdrant':<11} external {redacted_url(args.qdrant_url)}")
    else:
        say(f"  {'qdrant':<11} embedded engine in {stack.data_dir / 'qdrant'}")
    return redis_url, tasks["embeddings"].result()


def _updated(settings: S, **update: Any) -> S:
    """``settings`` with ``update`` applied and validated as a service validates its own
    settings (``load_settings``): pydantic's ``model_copy(update=...)`` validates nothing,
    so an address or URL computed here (an IPv6 host without brackets once) reached the
    service unchecked. A ``ValidationError`` is reported by ``start`` as a setting."""
    fresh = settings.validated_copy(**update)
    problems = fresh.problems()
    if problems:
        raise CliError(f"invalid setting: {'; '.join(problems)}")
    return fresh


def _generation_settings(args: argparse.Namespace, shared: dict[str, Any]) -> GenerationSettings:
    """The local provider on a free loopback port with autostart on, unless the user named
    another provider or a base URL; the launcher then starts it from these settings, as it
    does for ``python -m services.generation``."""
    from services.devlaunch.processes import free_port
    from services.generation.settings import GenerationSettings, provider_prefix

    wants_local = (
        args.llm_provider == "local"
        and not args.llm_base_url
        and not os.environ.get(provider_prefix("local") + "BASE_URL")
        # GENSEARCH_GENERATION_LOCAL_LLM_AUTOSTART=false: the local model server is the
        # user's own, at the local provider's configured URL (as for the service alone).
        and GenerationSettings().local_llm_autostart is not False
    )
    base_url = f"http://127.0.0.1:{free_port()}/v1" if wants_local else args.llm_base_url
    return GenerationSettings(
        **shared,
        default_provider=args.llm_provider,
        providers=_provider_overrides(args, base_url),
        local_llm_autostart=wants_local,
    )


def _check_providers(args: argparse.Namespace, generation: GenerationSettings) -> None:
    """The providers as ``load_settings`` checks them for the service alone, before
    anything starts, naming the option that set a value: ``--llm-base-url notaurl`` was
    "error: ProviderError: GENSEARCH_GENERATION_PROVIDERS[0].base_url (provider 'local'):
    …", a variable the user never set, once Redis and the models had started."""
    from services.common.settings import http_url_problem

    if args.llm_base_url and (problem := http_url_problem(args.llm_base_url)):
        raise CliError(f"invalid setting: --llm-base-url {problem}")
    problems = generation.problems()
    if not problems:
        return
    default = "GENSEARCH_GENERATION_DEFAULT_PROVIDER"
    options = {f"{default}:": f"--llm-provider ({default}):"}
    if args.llm_base_url or args.llm_model:  # the entry _provider_overrides appended
        ours = f"GENSEARCH_GENERATION_PROVIDERS[{len(generation.providers) - 1}]."
        options |= {ours + "base_url": "--llm-base-url", ours + "default_model": "--llm-model"}
    named = []
    for problem in problems:
        for variable, option in options.items():
            problem = problem.replace(variable, option)
        named.append(problem)
    raise CliError(f"invalid setting: {'; '.join(named)}")


def _warn_if_no_provider_key(generation: GenerationSettings) -> None:
    """Without it every generation fails MISSING_PROVIDER_API_KEY: say so now, naming the
    variables the default provider reads (never a value)."""
    config = generation.provider_configs()[generation.default_provider]
    if not config.requires_key or any(os.environ.get(n, "").strip() for n in config.api_key_env):
        return
    names = " or ".join(config.api_key_env)
    note(
        f"warning: provider {config.name!r} needs an API key and none is set: set {names}, "
        f"or send one with each call (gensearch --llm-key {config.name}=KEY)"
    )


def _tokenize_at(generation: GenerationSettings) -> dict[str, Any]:
    """The gateway counts the local model's tokens with its llama.cpp server's /tokenize,
    by default at the port the server has in a deployment (8088). Here the server is on a
    free port (or where --llm-base-url says): point the gateway there, unless the user set
    GENSEARCH_GATEWAY_TOKENIZE_URLS. Otherwise every Ask logs that /tokenize is down and
    counts by estimate."""
    if os.environ.get("GENSEARCH_GATEWAY_TOKENIZE_URLS"):
        return {}
    local = generation.provider_configs().get("local")
    if local is None or not local.base_url:
        return {}
    root = local.base_url.rstrip("/").removesuffix("/v1")
    return {"tokenize_urls": {"local": root}}


async def _start_redis(stack: Stack, settings: MemorySettings) -> str:
    from services.devlaunch.redis_server import start_embedded

    started = time.perf_counter()
    redis = await start_embedded(stack.data_dir / "redis", appendfsync=settings.redis_appendfsync)
    # Restarted in place if it dies (same port, same AOF): the memory service's client
    # reconnects by itself, so a Redis crash costs a moment of UNAVAILABLE, not the stack.
    stack.push("redis", redis.stop)
    say(
        f"  {'redis':<11} ready    {redis.url} (AOF in {redis.data_dir}) "
        f"{time.perf_counter() - started:.1f}s"
    )
    return redis.socket_url


async def _start_llm(stack: Stack, settings: GenerationSettings) -> None:
    from services.devlaunch.llm_server import LocalLLMUnavailable, start_local_llm

    started = time.perf_counter()
    try:
        llm = await start_local_llm(settings)
    except LocalLLMUnavailable as err:
        raise CliError(
            f"{err} (or use a provider instead: OPENAI_API_KEY=sk-... gensearch up "
            "--llm-provider openai, or --llm-base-url URL for any OpenAI-compatible server)"
        ) from None
    if llm is None:  # pragma: no cover - autostart is on whenever this runs
        return
    stack.push("llm", llm.stop)
    stack.children["llm"] = llm
    say(f"  {'llm':<11} ready    {llm.base_url} ({llm.alias}) {time.perf_counter() - started:.1f}s")


async def _load_embedder(stack: Stack, settings: RetrievalSettings) -> Any:
    from services.retrieval.embedders import LocalEmbedder

    started = time.perf_counter()
    path = Path(settings.local_model_path) if settings.local_model_path else None
    embedder = LocalEmbedder(path, batch_size=settings.embed_batch_size)

    async def close() -> None:
        embedder.close()

    stack.push("embeddings", close)
    dims = await embedder.dimensions()
    say(
        f"  {'embeddings':<11} ready    {settings.local_model_name} ({dims} dimensions) "
        f"{time.perf_counter() - started:.1f}s"
    )
    return embedder


def _provider_overrides(args: argparse.Namespace, base_url: str) -> list[dict[str, Any]]:
    from services.generation.settings import GenerationSettings

    overrides = list(GenerationSettings().providers)
    entry: dict[str, Any] = {"name": args.llm_provider}
    if base_url:
        entry["base_url"] = base_url
    if args.llm_model:
        entry["default_model"] = args.llm_model
        entry["models"] = [args.llm_model]
    if len(entry) > 1:
        overrides.append(entry)
    return overrides


async def _serve(stack: Stack, name: str, build: Callable[[], Awaitable[GrpcServer]]) -> None:
    from services.common.server import BindError

    started = time.perf_counter()
    server = await build()
    try:
        port = await server.start()
    except BindError as err:
        await server.stop(0)
        if err.metrics:  # the gRPC port is bound by now: the metrics port is not
            where, hint = (
                f"metrics port {server.metrics_port}",
                f"GENSEARCH_{name.upper()}_METRICS_PORT",
            )
        else:
            where = err.where
            hint = GATEWAY_PORT_OPTION if name == "gateway" else f"GENSEARCH_{name.upper()}_PORT"
        raise CliError(
            f"{name}: cannot listen on {where} ({err.problem}); another gensearch running? "
            f"choose another port with {hint} (0 = any free port)"
        ) from None
    address = join_host_port(_client_host(server.host), port)
    service = server.service_names[0]
    stack.parts[name] = Part(name, address, service, server)
    stack.push(name, lambda: server.stop(GRACE_SECONDS))
    say(f"  {name:<11} started  {address} {time.perf_counter() - started:.1f}s")


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


async def _wait_serving(stack: Stack, timeout: float = 30.0) -> None:
    """Every part must answer its gRPC health check with SERVING over a real channel."""
    deadline = time.monotonic() + timeout
    for part in stack.parts.values():
        while True:
            try:
                status = await check_health(part.address, part.service, timeout=2.0)
            except grpc.aio.AioRpcError as err:
                status = err.code().name
            if status == "SERVING":
                say(f"  {part.name:<11} SERVING  (grpc.health.v1 {part.service})")
                break
            if time.monotonic() > deadline:
                raise CliError(f"{part.name} did not become SERVING in {timeout}s ({status})")
            await asyncio.sleep(0.1)


def _write_stack_file(stack: Stack) -> None:
    """Where each part listens, so ``gensearch status`` can check them one by one."""
    data = {"pid": os.getpid(), **{name: part.address for name, part in stack.parts.items()}}
    (stack.data_dir / STACK_FILE).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


async def _remove_stack_file(stack: Stack) -> None:
    with contextlib.suppress(OSError):
        (stack.data_dir / STACK_FILE).unlink()


def status_hint(gateway_address: str, data_dir: str | Path) -> str:
    """The ``status`` command that checks this stack's services directly: it finds them in
    ``<data dir>/stack.json``, looked up where ``read_stack_file`` looks (``GENSEARCH_DATA_DIR``,
    else ``./data``), so another ``--data-dir`` is named in front of it. Without it, that
    command checked the services through the gateway instead, each row UNAUTHENTICATED
    ("no API key") on a stack with keys, and exit code 1 (or read another stack's file)."""
    command = f"{command_name()} --address {gateway_address} status"
    looked_up = Path(os.environ.get("GENSEARCH_DATA_DIR") or "data")
    if Path(data_dir).resolve() == looked_up.resolve():
        return command
    return f"GENSEARCH_DATA_DIR={shlex.quote(str(data_dir))} {command}"


def read_stack_file(data_dir: str | Path | None = None) -> dict[str, Any]:
    """The addresses of a running ``gensearch up`` (empty when there is none)."""
    base = Path(data_dir or os.environ.get("GENSEARCH_DATA_DIR") or "data")
    try:
        data = json.loads((base / STACK_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


async def run(args: argparse.Namespace) -> int:
    _quiet_libraries()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()  # set by a signal, or by a child process dying
    signalled = asyncio.Event()

    def on_signal() -> None:
        signalled.set()
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    serving = asyncio.Event()
    main_task = asyncio.create_task(_up(args, stop, serving))
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({main_task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not main_task.done() and not serving.is_set():
            # Ctrl-C (or a dead child) during start-up or the demo: cancel it; _up stops
            # what had started.
            main_task.cancel()
        try:
            return await main_task
        except asyncio.CancelledError:
            # Stopped by the user: a clean exit. Otherwise a child died (already reported).
            return 0 if signalled.is_set() else 1
    finally:
        stopper.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _watch_children(stack: Stack, stop: asyncio.Event) -> str:
    """Returns the name of the first child process that exits on its own."""
    while not stop.is_set():
        for name, child in stack.children.items():
            if not child.running:
                return name
        await asyncio.sleep(0.5)
    return ""


async def _up(args: argparse.Namespace, stop: asyncio.Event, serving: asyncio.Event) -> int:
    began = time.perf_counter()
    stack = await start(args)
    # A dead LLM server would turn every call into an error: stop instead. (Redis is
    # restarted in place by its supervisor.)
    watcher = asyncio.create_task(_watch_children(stack, stop))
    watcher.add_done_callback(lambda _: stop.set())
    try:
        say(
            f"gensearch is up in {time.perf_counter() - began:.1f}s: gateway at "
            f"{stack.gateway_address} (try: {status_hint(stack.gateway_address, stack.data_dir)})"
        )
        if args.demo:
            from services.cli import demo

            await demo.run(stack, began)
        serving.set()
        say("serving; press Ctrl-C to stop")
        await stop.wait()
    finally:
        watcher.cancel()
        died = watcher.result() if watcher.done() and not watcher.cancelled() else ""
        if died:
            say(f"\n{died} exited unexpectedly")
        # Shielded: a second Ctrl-C must not leave children behind.
        say("\nstopping (gateway first, Redis and the LLM server last)")
        await asyncio.shield(stack.close())
        say(f"stopped; data kept in {stack.data_dir}")
    if died:
        raise CliError(f"{died} exited unexpectedly; everything else was stopped")
    return 0


def main(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 130
    finally:
        sys.stdout.flush()
