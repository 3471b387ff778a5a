"""Config models shared by every flow: retry, error policy, step and sink bases."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from seamline.config.types import Duration
from seamline.resilience.retry import RetryPolicy

__all__ = [
    "CallStepConfig",
    "ComponentConfig",
    "ExpectDead",
    "ExpectOutcome",
    "FlowSettings",
    "FlowTest",
    "OnErrorConfig",
    "RetryConfig",
    "SinkConfig",
    "SourceConfig",
    "StepConfig",
    "StepMock",
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, arbitrary_types_allowed=True)


class RetryConfig(Strict):
    """How often and how patiently to retry a failed delivery."""

    max_attempts: int = Field(5, ge=1, le=1000, description="Attempts in all, the first included.")
    initial: Duration = Field(0.5, description="Upper bound of the first backoff (e.g. 500ms).")
    multiplier: float = Field(2.0, ge=1.0, description="Growth of the backoff bound per retry.")
    max: Duration = Field(300.0, description="Cap of a single backoff (e.g. 5m).")
    max_elapsed: Duration | None = Field(None, description="Give up after this long since the first attempt.")
    jitter: bool = Field(True, description="Full jitter: wait a random time up to the bound.")

    def policy(self) -> RetryPolicy:
        return RetryPolicy(
            max_attempts=self.max_attempts,
            initial=self.initial,
            multiplier=self.multiplier,
            cap=self.max,
            max_elapsed=self.max_elapsed,
            jitter=self.jitter,
        )


class OnErrorConfig(Strict):
    """What happens when a message fails."""

    retry: RetryConfig = Field(default_factory=RetryConfig, description="Default retry policy of the flow.")
    classify: dict[str, Literal["retryable", "fatal"]] = Field(
        default_factory=dict,
        description="Override whether an error is retried, by error code (`http.status.409`), code prefix "
        "(`http.status.4*`) or exception type (`TimeoutError`): `{http.status.409: retryable}`.",
    )
    dlq: Literal["store"] | dict[str, Any] = Field(
        "store",
        description="Where dead letters go: `store` (the state store, always kept for `seamline dlq`), or a "
        "sink such as `{kafka: {topic: orders.dlq}}` that each dead letter is also published to, with its "
        "error in headers (published after it is safe in the store; retried until it succeeds).",
    )


class FlowSettings(Strict):
    """Runtime knobs of one flow."""

    batch_size: int = Field(500, ge=1, le=100_000, description="Messages handled together.")
    concurrency: int = Field(2, ge=1, le=256, description="Batches in work at once.")
    queue: int = Field(4, ge=1, le=1024, description="Batches buffered between source and workers.")
    workers: int = Field(
        0, ge=0, le=64,
        description="Worker processes that decode, run the steps and encode (0: none, all in the engine's "
        "process). For flows whose steps only look at the body (map, filter, validate with JSON Schema), "
        "from an NDJSON file source or a Kafka source of JSON records to one sink: an NDJSON file sink, "
        "or a Kafka sink after a Kafka source; other flows are refused with config.workers. Worth it when "
        "the steps and the decoding, not the endpoints, are the bottleneck; leave the engine, the broker "
        "client and the broker (when it runs on the same machine) a core: on two cores, `workers: 1` suits "
        "Kafka and `workers: 2` a file. At least two batches per worker are in work at once (four with a "
        "Kafka sink), whatever `concurrency` says.",
    )
    journal: Literal["hops", "edges", "off"] = Field(
        "hops", description="hops: a record per step; edges: source and sinks only; off: none."
    )
    drain_timeout: Duration = Field(30.0, description="On shutdown, how long in-flight work may finish.")

    @field_validator("journal", mode="before")
    @classmethod
    def _yaml_off(cls, v: object) -> object:
        # YAML 1.1 reads a bare `off` as false
        return "off" if v is False else v


class ComponentConfig(Strict):
    """Base of every component config."""


class SourceConfig(ComponentConfig):
    """Base of source configs."""


class StepConfig(ComponentConfig):
    """Base of step configs: every step may carry a label."""

    label: str | None = Field(None, description="Name of this step in errors, the journal and tests.")


class BreakerSettings(Strict):
    """A circuit breaker in front of the endpoint: while open, messages wait (no attempt is spent)."""

    failure_threshold: int | None = Field(5, ge=1, description="Open after this many consecutive failures.")
    failure_rate: float | None = Field(
        None, gt=0, le=1, description="Open when this share of calls in the window failed (e.g. 0.5)."
    )
    window: Duration = Field(60.0, description="Sliding window of the failure rate.")
    min_calls: int = Field(10, ge=1, description="Calls in the window before the rate counts.")
    cool_down: Duration = Field(30.0, description="How long it stays open before one probe is let through.")

    def config(self) -> Any:
        from seamline.resilience.breaker import BreakerConfig

        return BreakerConfig(
            failure_threshold=self.failure_threshold,
            failure_rate=self.failure_rate,
            window=self.window,
            min_calls=self.min_calls,
            cool_down=self.cool_down,
        )


class RateLimitSettings(Strict):
    """A token bucket for the endpoint; it also slows down on 429 / Retry-After / rate-limit headers."""

    rate: str = Field(..., description="Sustained rate, e.g. `100/s`, `600/min`.")
    burst: int | None = Field(None, ge=1, description="Tokens that may be spent at once (default: one second's worth).")


class CallStepConfig(StepConfig):
    """Base of steps that call an external system per message (enrichment): they may retry on their own terms."""

    retry: RetryConfig | None = Field(None, description="Retry policy of this call (default: the flow's).")
    max_in_flight: int = Field(
        8, ge=1, le=1024, description="Calls in flight at once within a batch (1: one message after the other). "
        "The results keep the batch order either way."
    )


class SinkConfig(ComponentConfig):
    """Base of sink configs: a label, a retry policy of its own, and isolation from a slow endpoint."""

    label: str | None = Field(None, description="Name of this sink (route targets, journal, errors).")
    retry: RetryConfig | None = Field(None, description="Retry policy of this sink (default: the flow's).")
    timeout: Duration | None = Field(
        60.0, description="A write that takes longer fails (retryable), so a hung endpoint stalls nothing else."
    )
    concurrency: int | None = Field(None, ge=1, le=1024, description="Writes in flight at once (bulkhead).")
    breaker: BreakerSettings | None = Field(None, description="Circuit breaker for this sink's endpoint.")
    rate_limit: RateLimitSettings | None = Field(None, description="Rate limit for this sink's endpoint.")


# -- flow tests (``tests:`` in a flow file, run by ``seamline test``) ---------------------------------------


class StepMock(Strict):
    """What a labelled step does instead, in a test: give a body, or fail."""

    returns: Any = Field(None, description="The body the step gives (any JSON value).")
    raises: str | None = Field(None, description="Fail with this message instead of giving a body.")
    code: str = Field("test.mock", description="raises: the error code (as the DLQ and `classify` see it).")
    retryable: bool = Field(False, description="raises: a retryable error (retried by the flow's policy).")

    @model_validator(mode="after")
    def _one_thing(self) -> StepMock:
        if self.raises is not None and "returns" in self.model_fields_set:
            raise ValueError("a mock either returns a body or raises an error, not both")
        return self


class ExpectDead(Strict):
    """A dead letter a test expects; only the fields given are compared."""

    step: str | None = Field(None, description="The label of the step (or sink, or `source`) that failed.")
    code: str | None = Field(None, description="The error code, e.g. `mapping.eval`.")
    reason: str | None = Field(None, description="Text the reason contains.")
    attempts: int | None = Field(None, ge=1, description="How many times it was tried, the first included.")


class ExpectOutcome(Strict):
    """What a test expects of the flow."""

    output: list[Any] | None = Field(
        None, description="The bodies every sink receives, in order. Without `output` and `sinks`, no sink "
        "receives anything."
    )
    sinks: dict[str, list[Any]] | None = Field(
        None, description="The bodies each named sink receives, in order (sinks not named receive nothing)."
    )
    dead: list[ExpectDead] = Field(
        default_factory=list, description="The dead letters, in any order (none when not given)."
    )

    @model_validator(mode="after")
    def _one_way(self) -> ExpectOutcome:
        if self.output is not None and self.sinks is not None:
            raise ValueError("give either output (every sink) or sinks (by label), not both")
        return self


class FlowTest(Strict):
    """One offline test of a flow: its input, mocks for labelled steps, what must come out."""

    name: str = Field(..., min_length=1, description="What the test shows, e.g. `a paid order is exported`.")
    input: Any = Field(None, description="One input body (any JSON value).")
    inputs: list[Any] | None = Field(None, description="Several input bodies, in order (instead of `input`).")
    headers: dict[str, str] = Field(default_factory=dict, description="Headers of every input message.")
    mocks: dict[str, StepMock] = Field(
        default_factory=dict, description="Steps replaced by their label, e.g. an HTTP call: `{lookup: {returns: "
        "{...}}}`; steps not mocked run as they are."
    )
    lookups: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Lookup tables (`$xref`) replaced by these rows, by table name, in "
        "every map step that declares them: a table loaded from SQL or HTTP becomes `{key: value}`."
    )
    expect: ExpectOutcome = Field(default_factory=ExpectOutcome, description="What must come out.")

    @model_validator(mode="after")
    def _some_input(self) -> FlowTest:
        if self.inputs is not None and "input" in self.model_fields_set:
            raise ValueError("give either input or inputs, not both")
        if self.inputs is None and "input" not in self.model_fields_set:
            raise ValueError("a test needs input (one body) or inputs (a list of bodies)")
        return self

    def bodies(self) -> list[Any]:
        return list(self.inputs) if self.inputs is not None else [self.input]
