"""The ``mqtt`` task kind: publish one message to an MQTT topic (MQTT 5, via aiomqtt).

At ``qos = 1`` (the default) the task waits for the broker's PUBACK. The message carries
the task instance's idempotency key as the MQTT 5 user property ``cued-idempotency-key``
(the same on every attempt and across restarts): a retry after a PUBACK that got lost
publishes again, and a consumer that deduplicates on it sees it once. MQTT brokers do not
deduplicate.

Each task connects, publishes and disconnects (a fresh clean session): an MQTT client
holds one session, and tasks publish to whichever brokers their parameters name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import BaseModel, ConfigDict, Field, field_validator

from cued.daemon.sdk import TaskError, current_traceparent, describe_error, new_id

from ._brokers import IDEMPOTENCY_KEY, encode_value, resolve_url

if TYPE_CHECKING:
    from cued.daemon.sdk import TaskContext

__all__ = ["MqttPublishParams", "MqttPublishTask"]


class MqttPublishParams(BaseModel):
    """Parameters of an ``mqtt`` task.

    :param broker: ``mqtt://host:port`` or ``mqtts://host:port``
    :param topic: the topic to publish to (no wildcards)
    :param value: the payload: a string as UTF-8, anything else as JSON
    :param qos: 1 waits for the broker's PUBACK; 0 sends and forgets
    :param retain: whether the broker keeps the message for new subscribers
    :param user_properties: more MQTT 5 user properties
    :param username: the broker's user
    :param password: ``env:NAME``, ``file:PATH``, or the value itself
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    broker: str = Field(min_length=1)
    topic: str = Field(min_length=1)
    value: Any
    qos: Literal[0, 1] = 1
    retain: bool = False
    user_properties: dict[str, str] = Field(default_factory=dict)
    username: str | None = None
    password: str | None = None
    timeout: float = Field(30.0, gt=0, allow_inf_nan=False)

    @field_validator("topic")
    @classmethod
    def _topic(cls, value: str) -> str:
        if "+" in value or "#" in value or "\x00" in value:
            raise ValueError("a topic to publish to may not hold '+', '#' or NUL")
        return value


class MqttPublishTask:
    """Publish; succeed with ``{"topic", "qos"}``."""

    name: ClassVar[str] = "mqtt"
    Params: ClassVar[type[BaseModel]] = MqttPublishParams

    async def execute(self, params: MqttPublishParams, ctx: TaskContext) -> Any:
        """:raises TaskError: if the broker cannot be reached or refuses the message"""
        from cued.connectors.mqtt import broker_address

        try:
            host, port, tls = broker_address(params.broker)
        except ValueError as exc:
            raise TaskError(str(exc)) from exc
        payload = encode_value(params.value)
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        user = [(IDEMPOTENCY_KEY, ctx.idempotency_key), *params.user_properties.items()]
        if (traceparent := current_traceparent()) is not None:
            user.append(("traceparent", traceparent))
        properties.UserProperty = user
        password = resolve_url(params.password, "an MQTT password") if params.password else None
        try:
            async with aiomqtt.Client(
                host,
                port,
                identifier=f"cued-publish-{new_id()}",
                protocol=aiomqtt.ProtocolVersion.V5,
                username=params.username,
                password=password,
                timeout=params.timeout,
                tls_params=aiomqtt.TLSParameters() if tls else None,
            ) as client:
                await client.publish(
                    params.topic,
                    payload,
                    qos=params.qos,
                    retain=params.retain,
                    properties=properties,
                    timeout=params.timeout,
                )
        except aiomqtt.MqttError as exc:
            raise TaskError(
                f"publishing to topic {params.topic!r} at {params.broker!r} failed: "
                f"{describe_error(exc)}"
            ) from exc
        return {"topic": params.topic, "qos": params.qos}
