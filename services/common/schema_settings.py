"""The bounds of a caller's ``response_format`` JSON schema, as settings: the gateway checks
a schema before it fans a request out, and generation checks it again (a peer may call it
directly), each with its own namespace (``GENSEARCH_GATEWAY_MAX_SCHEMA_NODES``,
``GENSEARCH_GENERATION_MAX_SCHEMA_NODES``) and the same meaning."""

from __future__ import annotations

from pydantic import Field

from services.common.json_schema import (
    CLASS_SPAN_CEILING,
    MAX_IN_PLACE_DEPTH,
    MAX_PATTERN_NESTING,
    MAX_PATTERN_SIZE,
    MAX_SCHEMA_CLASS_SPAN,
    MAX_SCHEMA_PATTERNS_SIZE,
    NESTING_CEILING,
    PATTERN_SIZE_CEILING,
    SchemaLimits,
)
from services.common.settings import MAX_SCHEMA_DEPTH, MAX_SIZE_BYTES, CommonSettings


class SchemaBoundSettings(CommonSettings):
    # The schema's size as compact JSON and its nesting depth.
    max_schema_chars: int = Field(default=65_536, ge=2, le=MAX_SIZE_BYTES)
    max_schema_depth: int = Field(default=32, ge=1, le=MAX_SCHEMA_DEPTH)
    # Its subschemas (objects and booleans outside const/enum/default/examples): the
    # metaschema check costs ~0.4 ms each on the event loop ({"allOf": [{}, ...]} of 60 KB:
    # ~8 s).
    max_schema_nodes: int = Field(default=1000, ge=1, le=100_000)
    # Its patterns (docs/generation.md#json-output-response_format): the code points their
    # character classes' ranges span together (each walked once when they were compiled),
    # each pattern's and all patterns' size with counted repeats written out (``regex``
    # writes them out, ~280 bytes an atom), their groups' nesting (the parsers recurse per
    # group), and how deep subschemas apply one another in place ($ref, allOf...: a level
    # of recursion each when an answer is validated). Upper bounds: json_schema's *_CEILING.
    max_schema_class_span: int = Field(default=MAX_SCHEMA_CLASS_SPAN, ge=0, le=CLASS_SPAN_CEILING)
    max_schema_pattern_size: int = Field(default=MAX_PATTERN_SIZE, ge=1, le=PATTERN_SIZE_CEILING)
    max_schema_patterns_size: int = Field(
        default=MAX_SCHEMA_PATTERNS_SIZE, ge=1, le=PATTERN_SIZE_CEILING
    )
    max_schema_pattern_nesting: int = Field(default=MAX_PATTERN_NESTING, ge=1, le=NESTING_CEILING)
    max_schema_in_place_depth: int = Field(default=MAX_IN_PLACE_DEPTH, ge=1, le=NESTING_CEILING)

    def schema_limits(
        self, *, pattern_seconds: float = 0.1, validate_seconds: float = 1.0
    ) -> SchemaLimits:
        """The bounds as json_schema takes them, refusals naming this service's settings;
        the time budgets are those of validating an answer (generation's)."""
        namespace = self.namespace()
        return SchemaLimits(
            max_chars=self.max_schema_chars,
            max_depth=self.max_schema_depth,
            max_nodes=self.max_schema_nodes,
            nodes_setting=f"{namespace}MAX_SCHEMA_NODES",
            max_class_span=self.max_schema_class_span,
            max_pattern_size=self.max_schema_pattern_size,
            max_patterns_size=self.max_schema_patterns_size,
            max_pattern_nesting=self.max_schema_pattern_nesting,
            max_in_place_depth=self.max_schema_in_place_depth,
            namespace=namespace,
            pattern_seconds=pattern_seconds,
            validate_seconds=validate_seconds,
        )
