"""cluster_factory hands each ClusterConfig field to what it bounds."""
import inspect

from twisted.internet.task import Clock

from twisted_chat.server.cluster.redisconn import parse_url
from twisted_chat.server.cluster.redislog import RedisLog
from twisted_chat.server.cluster.service import cluster_factory
from twisted_chat.server.config import ClusterConfig, ServerConfig

#: RedisLog's bounds on what peers make Redis hold.
BOUNDS = ("retain_days", "retain_messages", "retain_bytes", "stream_bytes")


def test_cluster_factory_passes_each_cluster_option_on() -> None:
    cluster = ClusterConfig(redis="redis://127.0.0.1:1/0", node_timeout=9.0, wait=3.0,
                            max_waiting=12_345, retain_bytes=54_321, set_retention=True,
                            stream_bytes=98_765)
    factory, redis = cluster_factory(ServerConfig(retain_days=2.0, retain_messages=7),
                                     cluster, Clock(), parse_url(cluster.redis or ""))
    state = redis.state
    assert factory.state is state
    assert (state.wait, state.max_waiting) == (3.0, 12_345)
    assert factory.held_input.limit == 12_345  # --redis-queue bounds the held input too
    assert redis.node_timeout == 9.0
    assert redis.pruning.retention.bytes == 54_321 and redis.pruning.set_retention
    assert (redis.pruning.retention.days, redis.pruning.retention.messages) == (2.0, 7)
    assert redis.stream_bound.own == 98_765


def test_a_node_s_log_has_the_default_options_bounds() -> None:
    config, cluster = ServerConfig(), ClusterConfig(redis="redis://127.0.0.1:1/0")
    _, redis = cluster_factory(config, cluster, Clock(), parse_url(cluster.redis or ""))
    retention = redis.pruning.retention
    assert (retention.days, retention.messages, retention.bytes, redis.stream_bound.own) == (
        config.retain_days, config.retain_messages, cluster.retain_bytes, cluster.stream_bytes)
    assert None not in (retention.messages, retention.bytes) and redis.stream_bound.own > 0


def test_a_redis_log_s_bounds_have_no_default() -> None:
    """No bound is its caller's choice, spelled out: a caller that forgets
    them is refused, not given a log that holds whatever peers send."""
    parameters = inspect.signature(RedisLog).parameters
    assert {name: parameters[name].default for name in BOUNDS} == dict.fromkeys(
        BOUNDS, inspect.Parameter.empty)
