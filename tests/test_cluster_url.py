"""C{--redis} URLs: what each form means, and clear refusals."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from tests.redisproc import REDIS_SERVER, RedisServer
from tests.test_e2e_tls import self_signed
from twisted_chat.server.cluster.redisconn import connect, parse_url
from twisted_chat.server.cluster.service import account_tool_args
from twisted_chat.server.service import Options, makeService


def test_redis_url_forms(tmp_path: Path) -> None:
    t = parse_url("redis://127.0.0.1:6380/2")
    assert (t.endpoint, t.password, t.db) == ("tcp:127.0.0.1:6380", None, 2)
    t = parse_url("redis://:pa%3Ass@example.org")
    assert (t.endpoint, t.password, t.db) == ("tcp:example.org:6379", "pa:ss", 0)
    assert "pa" not in t.display
    t = parse_url("redis://:S3cr@tPW@h/0")  # an '@' not written %40: the host is after the last
    assert (t.endpoint, t.password) == ("tcp:h:6379", "S3cr@tPW") and "PW" not in t.display
    t = parse_url("rediss://user:pw@redis.example.org:6390/1")
    assert (t.endpoint, t.username, t.password, t.db, t.tls_host, t.trust) == (
        "tcp:redis.example.org:6390", "user", "pw", 1, "redis.example.org", None)
    _, cert = self_signed(tmp_path)
    t = parse_url(f"rediss://h/0?ca={cert}")
    assert t.trust is not None
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


@pytest.mark.parametrize("content, why", [
    (None, "No such file"),
    (b"not a certificate\n", "no PEM certificate in it"),
    (b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
     "unreadable certificate"),
])
def test_a_bad_ca_file_is_refused_at_start(tmp_path: Path, content: bytes | None,
                                           why: str) -> None:
    """Read once when the node starts (before it listens): a file that
    cannot be used stops the start with one line saying why, instead of a
    node retrying for ever (it was read at each connection)."""
    ca = tmp_path / "ca.pem"
    if content is not None:
        ca.write_bytes(content)
    options = Options()
    options.parseOptions(["--redis", f"rediss://h/0?ca={ca}"])
    with pytest.raises(SystemExit) as e:
        makeService(options)
    message = str(e.value)
    assert message.startswith(f"twistd chat: --redis: cannot use ca={ca}: ")
    assert why in message and "\n" not in message


def _certificate(name: str, key: Any, issuer: tuple[str, Any] | None = None) -> Any:
    """A certificate for C{name} (C{localhost}: Redis's), signed by
    C{issuer}'s (name, key), or by itself (a CA)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    signer_name, signer_key = issuer or (name, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, signer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None),
                       critical=True)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
    return builder.sign(signer_key, hashes.SHA256())


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
@pytest_twisted.ensureDeferred
async def test_a_ca_bundle_is_trusted_whole(tmp_path: Path) -> None:
    """A C{ca=} bundle whose second certificate is the CA that signed
    Redis's: trusted (only its first one was, and no connection was made)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from twisted.internet import reactor

    pem = serialization.Encoding.PEM
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(3)]
    other_ca = _certificate("Another CA", keys[0])
    redis_ca = _certificate("Redis CA", keys[1])
    leaf = _certificate("localhost", keys[2], ("Redis CA", keys[1]))
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    key.write_bytes(keys[2].private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    cert.write_bytes(leaf.public_bytes(pem))
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(other_ca.public_bytes(pem) + redis_ca.public_bytes(pem))
    redis = RedisServer(tmp_path, password="pw", tls=(key, cert)).start()
    try:
        proto = await connect(parse_url(f"rediss://:pw@localhost:{redis.port}/0?ca={bundle}"),
                              reactor)
        try:
            assert await proto.ping() == "PONG"
        finally:
            proto.transport.loseConnection()
    finally:
        redis.stop()


_SECRET = "S3cr#tPW"


def _with_passwords(url: str) -> list[str]:
    """C{url} with a password in the userinfo, as is, with a '#' and with
    an '@', and in a password= parameter."""
    scheme, sep, rest = url.partition("://")
    forms = []
    if sep:
        forms.append(f"{scheme}://:{_SECRET.replace('#', '')}@{rest}")
        forms.append(f"{scheme}://user:{_SECRET}@{rest}")
        # An '@' not written %40: urlsplit takes the host after the last one.
        forms.append(f"{scheme}://:{_SECRET.replace('#', '@')}@{rest}")
    joiner = "&" if "?" in url else "?"
    forms.append(f"{url}{joiner}password={_SECRET.replace('#', '%23')}")
    return forms


@pytest.mark.parametrize("url", [
    "http://x", "redis://", "unix://", "redis://h:99999999",
    "redis://h/notanumber", "redis://h/0?ca=/x.pem",
    "redis://h/-1", "redis://h/1_0", "redis://h//0", "redis://h/0/",
    "redis://h:0/0", "redis://h/1?db=2", "redis://h/0?pasword=pw", "redis://h/0?ca",
    "rediss://h/0?ca=/a.pem&ca=/b.pem", "redis://h/0#x", "redis://h/0?db=1&&",
    "unix://h/run/redis.sock", "unix:///run/redis.sock?db=-1",
    "redis://h/0?password=a&password=b",
])
def test_redis_url_errors_do_not_show_the_password(url: str) -> None:
    """rev13-attack 4: the error line goes to stderr (the journal); it
    quotes the URL without its password, wherever the password is."""
    for form in _with_passwords(url):
        with pytest.raises(ValueError) as e:
            parse_url(form)
        message = str(e.value)
        assert "S3cr" not in message and "tPW" not in message, (form, message)
        assert "***" in message or "ca=" in message, message
    options = Options()
    options.parseOptions(["--redis", _with_passwords(url)[-1]])
    with pytest.raises(SystemExit) as exited:
        makeService(options)
    assert "--redis" in str(exited.value) and "S3cr" not in str(exited.value)


@pytest.mark.parametrize("url, said", [
    ("redis://h/0?password=S3cr&tPW", "malformed query"),
    ("redis://h/0?password=S3cr&tPW=1", "unknown parameter after password="),
    ("redis://h/0?password=S3cr&tPW=1&tPW=2", "unknown parameter after password="),
    ("redis://h/?db=1&password=S3cr&db=tPW", "given twice"),
    ("redis://h/0?password=S3cr&password=tPW", "given twice"),
    ("redis://h/1?password=S3cr&db=tPW", "the database is given twice"),
    ("redis://h/0?password=S3cr&ca=tPW", "ca= is for rediss:// only"),
    ("rediss://h/0?password=S3cr&ca=/tPW.pem", "cannot use the ca= file given after"),
    ("redis://h/0?password=S3cr&t#PW", "malformed query"),
])
def test_a_password_with_an_ampersand_is_not_shown(url: str, said: str) -> None:
    """reread13 cluster 1: an '&' not written %26 in a password= value
    made the rest of the password look like parameters; the URL was hidden
    only up to the '&', and an unknown (or repeated) parameter's error
    named a piece of the password.  Everything after password= is hidden,
    the error names nothing after it, and says how to write an '&'."""
    with pytest.raises(ValueError) as e:
        parse_url(url)
    message = str(e.value)
    assert "tPW" not in message and "S3cr" not in message and "PW" not in message, message
    assert said in message and "write & as %26" in message, message
    options = Options()
    options.parseOptions(["--redis", url])
    with pytest.raises(SystemExit) as exited:
        makeService(options)
    assert "tPW" not in str(exited.value) and "%26" in str(exited.value)


def test_a_name_before_password_is_still_named() -> None:
    """Only what follows password= may be the password's: a mistyped
    parameter before it is named, and a password= before others parses."""
    with pytest.raises(ValueError, match="unknown parameter 'pasword'") as e:
        parse_url("redis://h/0?pasword=x&password=S3cr&tPW=1")
    assert "tPW" not in str(e.value) and "S3cr" not in str(e.value)
    t = parse_url("redis://h/?password=pw%26x&db=3")
    assert (t.password, t.db) == ("pw&x", 3)


def test_the_accounts_tool_is_named_with_the_url_given_without_its_password(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The warning that nobody can log in (a node under --accounts required
    with no account in Redis: test_cluster_accounts_e2e.py) names the tool's
    --redis as the node was given it, its password not shown, and the
    password file in full, each ready for a shell."""
    monkeypatch.chdir(tmp_path)
    assert account_tool_args("redis://127.0.0.1:6380/2", None) == (
        "--redis redis://127.0.0.1:6380/2")
    assert account_tool_args("unix:///run/redis.sock?db=3&password=S3cret", None) == (
        "--redis 'unix:///run/redis.sock?db=3&password=***'")
    assert account_tool_args("redis://:S3cret@h/0", "my pw") == (
        f"--redis 'redis://***@h/0' --redis-password-file '{tmp_path}/my pw'")
