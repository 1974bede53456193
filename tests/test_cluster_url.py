"""C{--redis} URLs: what each form means, and clear refusals."""

from __future__ import annotations

import pytest

from twisted_chat.server.cluster.redisconn import parse_url
from twisted_chat.server.service import Options, makeService


def test_redis_url_forms() -> None:
    t = parse_url("redis://127.0.0.1:6380/2")
    assert (t.endpoint, t.password, t.db) == ("tcp:127.0.0.1:6380", None, 2)
    t = parse_url("redis://:pa%3Ass@example.org")
    assert (t.endpoint, t.password, t.db) == ("tcp:example.org:6379", "pa:ss", 0)
    assert "pa" not in t.display
    t = parse_url("rediss://user:pw@redis.example.org:6390/1")
    assert (t.endpoint, t.username, t.password, t.db, t.tls_host, t.ca) == (
        "tcp:redis.example.org:6390", "user", "pw", 1, "redis.example.org", None)
    assert parse_url("rediss://h/0?ca=/etc/ca.pem").ca == "/etc/ca.pem"
    t = parse_url("unix:///run/redis/redis.sock?db=4&password=pw")
    assert (t.endpoint, t.password, t.db) == ("unix:/run/redis/redis.sock", "pw", 4)
    assert parse_url("redis://h/").db == parse_url("redis://h").db == 0
    assert parse_url("redis://h?db=3").db == 3
    assert parse_url("redis://[::1]:6380/0").endpoint == r"tcp:\:\:1:6380"


@pytest.mark.parametrize("url", [
    "http://x", "redis://", "unix://", "redis://h:99999999",
    "redis://h/notanumber", "redis://h/0?ca=/x.pem",
    # Review revclu F8: each of these was taken, and the node then retried
    # for ever (or ran against another database than meant).
    "redis://h/-1", "redis://h/+1", "redis://h/1_0", "redis://h//0", "redis://h/0/",
    "redis://h:0/0", "redis://h/1?db=2", "redis://h/0?pasword=pw", "redis://h/0?ca",
    "rediss://h/0?ca=/a.pem&ca=/b.pem", "redis://:pa#ss@h/0", "redis://h/0#x",
    "unix://h/run/redis.sock", "unix:///run/redis.sock?db=-1", "redis://h/9999999999",
])
def test_bad_redis_urls_are_refused_at_start(url: str) -> None:
    options = Options()
    options.parseOptions(["--redis", url])
    with pytest.raises(SystemExit) as e:
        makeService(options)
    assert "--redis" in str(e.value)
