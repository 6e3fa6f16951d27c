"""How stream stdin reaches the channel: in pieces big enough to fill SSH packets, every byte
once and in order; and the transport's cipher preference."""

import paramiko
from hypothesis import given
from hypothesis import strategies as st

from clusterctl.transport import ssh
from clusterctl.transport.ssh import SEND_AT_LEAST, _Coalesced, _transport


@given(st.lists(st.integers(min_value=0, max_value=3 * SEND_AT_LEAST), max_size=40))
def test_pieces_are_big_except_the_last_and_carry_every_byte_in_order(sizes):
    sent: list[bytes] = []
    sink = _Coalesced(sent.append)
    written = []
    for i, n in enumerate(sizes):
        data = bytes([i % 251]) * n
        written.append(data)
        sink.write(data)
    sink.flush()
    assert b"".join(sent) == b"".join(written)
    assert all(len(p) >= SEND_AT_LEAST for p in sent[:-1])
    assert all(sent)  # never an empty send


def test_tar_headers_ride_with_the_data_after_them():
    sent: list[bytes] = []
    sink = _Coalesced(sent.append)
    for _ in range(600):
        sink.write(b"h" * 512)  # a file's tar header
        sink.write(b"d" * 700)  # a small file
    sink.flush()
    assert len(sent) == -(-600 * 1212 // SEND_AT_LEAST)


def test_the_transport_offers_aes_gcm_first_and_keeps_the_rest():
    class Sock:
        def settimeout(self, t):  # noqa: ANN001
            pass

        def close(self):
            pass

    t = _transport(Sock())
    try:
        ciphers = t.get_security_options().ciphers
        assert ciphers[: len(ssh.PREFERRED_CIPHERS)] == ssh.PREFERRED_CIPHERS
        assert set(ciphers) == set(paramiko.Transport._preferred_ciphers)
    finally:
        t.close()
