"""The process's W3C trace context propagators (``OTEL_PROPAGATORS``), loaded at first use.

``opentelemetry.propagate`` loads the propagators ``OTEL_PROPAGATORS`` names when it is
imported, and raises for a name it cannot load. Imported at the top of the chassis, it
stopped every service in a traceback before its settings were read; loaded here on the
first call, the name is checked at start first (services/common/otel_environment.py) and a
bad one is one ``invalid setting`` line like any other.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from opentelemetry.context import Context
from opentelemetry.propagators.textmap import CarrierT, Getter, Setter, default_setter

_propagate: ModuleType | None = None


def _module() -> ModuleType:
    global _propagate
    if _propagate is None:
        _propagate = importlib.import_module("opentelemetry.propagate")
    return _propagate


def load() -> None:
    """Loads the propagators now (tracing.tracer_provider, as a server is built after its
    settings were checked), so that no call pays for the import."""
    _module()


def extract(carrier: CarrierT, getter: Getter[CarrierT]) -> Context:
    """The caller's context from ``carrier``, through the global propagator."""
    context: Context = _module().extract(carrier, getter=getter)
    return context


def inject(carrier: Any, context: Context, setter: Setter[Any] = default_setter) -> None:
    """This call's context into ``carrier``, through the global propagator."""
    _module().inject(carrier, context=context, setter=setter)
