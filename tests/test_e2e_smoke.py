import pytest

pytestmark = pytest.mark.e2e


def test_handshake_and_broadcast(chat_server, connect):
    server = chat_server()
    alice = connect(server.port)
    assert alice.readline().startswith("HELLO chat/1 ")
    assert alice.register("alice") == ["USER alice lobby", "USERS 1"]
