"""
Password hashing: salted scrypt hashes, the password length rule, and the
dummy hash a nick with no account is checked against (docs/accounts.md,
"The hash").

Why scrypt (C{hashlib.scrypt}) and not argon2
---------------------------------------------
Both are memory-hard, salted, slow-by-design password hashes that current
guidance (OWASP) accepts; Argon2id is its first choice and scrypt the
recommended alternative.  scrypt is in Python's standard library (backed by
OpenSSL), so the server gains no compiled dependency to build, audit and keep
up to date, and every Python 3.11 has it.  The parameters are stored with each
hash (C{scrypt$N$r$p$salt$hash}), so they can be raised later without
breaking existing accounts.  The defaults (N=2**14, r=8, p=1: 16 MiB and
about 50 ms a check) are scrypt's 2009 parameters for interactive logins,
below OWASP's current minimum (N=2**17, or N=2**14 with p=5): a choice of
login latency and hashing-flood headroom over offline cost, with the
numbers in docs/accounts.md ("The hash").
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading

# password_bytes is wire.py's: the clients count a password's bytes as the
# server hashes them, and do not import the server.
from twisted_chat.wire import PASSWORD_MAX_BYTES, PASSWORD_MIN_BYTES, password_bytes

__all__ = [
    "dummy_hash",
    "hash_password",
    "make_dummy_hash",
    "password_bytes",
    "password_problem",
    "verify_password",
]

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
_SALT_BYTES = 16
_KEY_BYTES = 32
# OpenSSL's default limit (32 MiB) is just above what N=2**14, r=8 needs;
# stored hashes with bigger parameters get room to be checked.
_MAXMEM = 256 * 1024 * 1024
def password_problem(password: bytes) -> str | None:
    """Why C{password} may not be used, or C{None} when it may."""
    if not PASSWORD_MIN_BYTES <= len(password) <= PASSWORD_MAX_BYTES:
        return (
            f"a password is {PASSWORD_MIN_BYTES} to {PASSWORD_MAX_BYTES} bytes long"
        )
    return None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(
    password: bytes, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P
) -> str:
    """A new salted hash of C{password}: C{scrypt$N$r$p$salt$hash}, base64."""
    salt = secrets.token_bytes(_SALT_BYTES)
    key = hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, dklen=_KEY_BYTES, maxmem=_MAXMEM)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(key)}"


def verify_password(password: bytes, encoded: str) -> bool:
    """Whether C{password} is the one C{encoded} was made from (constant time)."""
    try:
        scheme, n, r, p, salt, key = encoded.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(key)
        actual = hashlib.scrypt(
            password,
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(expected),
            maxmem=_MAXMEM,
        )
    except ValueError:  # a malformed hash never matches
        return False
    return hmac.compare_digest(actual, expected)


# A hash no password matches in practice, checked when a nick has no account
# so that the answer takes as long as for a wrong password.  Made once, by
# make_dummy_hash at the server's start (it costs one hash: made at the first
# such check, that check would take twice as long, and tell the nick has no
# account); made at first use where nothing made it before.
_dummy_hash: str | None = None
_dummy_lock = threading.Lock()


def dummy_hash() -> str:
    """The hash a nick with no account is checked against (made now if
    nothing made it before)."""
    global _dummy_hash
    with _dummy_lock:
        if _dummy_hash is None:
            _dummy_hash = hash_password(secrets.token_bytes(32))
        return _dummy_hash


def make_dummy_hash() -> None:
    """Make the hash a nick with no account is checked against, now (one
    hash of work: the server runs it on its password threads at start)."""
    dummy_hash()

