"""Wire protocol: framing, authentication (incl. replay), validation of every message."""

from __future__ import annotations

import socket
import struct
import threading

import numpy as np
import pytest

from autoconverge.impl.migration import addresses, framing, handshake, macs, messages
from autoconverge.impl.migration.errors import (
    AuthenticationError,
    PeerError,
    ProtocolError,
    TransportError,
)
from autoconverge.impl.migration.framing import FrameChannel, MsgType
from autoconverge.impl.migration.scripted import (
    KEY,
    LAYOUT,
    PAGES,
    PS,
    MemStream,
    client_frames,
    pages_payload,
    run_destination,
    valid_migration_frames,
)


def _pair(key_c: bytes = KEY, key_s: bytes = KEY) -> tuple[object, object]:
    a, b = socket.socketpair()
    a.settimeout(5)
    b.settimeout(5)
    out: dict[str, object] = {}

    def server() -> None:
        try:
            out["server"] = handshake.server_handshake(b, key_s)
        except Exception as exc:
            out["server"] = exc

    th = threading.Thread(target=server)
    th.start()
    try:
        client: object = handshake.client_handshake(a, key_c)
    except Exception as exc:
        client = exc
    th.join(10)
    a.close() if isinstance(client, Exception) else None
    return client, out["server"]


def test_handshake_and_frames_round_trip() -> None:
    c, s = _pair()
    assert isinstance(c, FrameChannel) and isinstance(s, FrameChannel)
    c.send(MsgType.LAYOUT, messages.encode_layout(LAYOUT))
    f = s.recv()
    assert f.type is MsgType.LAYOUT
    assert messages.decode_layout(f.payload, messages.Limits()) == LAYOUT
    s.send(MsgType.READY, messages.encode_ready(1 << 20))
    assert messages.decode_ready(c.expect(MsgType.READY).payload) == 1 << 20
    big = bytes(range(256)) * 4096  # > 256 KiB: the multi-part send path
    got: list[bytes] = []
    th = threading.Thread(target=lambda: got.append(bytes(s.recv().payload)))
    th.start()
    c.send(MsgType.PAGES, b"x" * 8, big)
    th.join(10)
    assert got == [b"x" * 8 + big]


def test_wrong_key_is_rejected_on_both_sides_with_clear_errors() -> None:
    c, s = _pair(key_c=b"another-key-of-sufficient-length")
    assert isinstance(s, AuthenticationError)
    assert "unauthenticated peer" in str(s)
    assert isinstance(c, AuthenticationError)
    assert "same key" in str(c)


def test_unauthenticated_peer_never_reaches_the_vm() -> None:
    frames, _ = valid_migration_frames()
    stream = client_frames(frames, key=b"attacker-guessed-key-xxxxxxxxxxx")
    res, err, created, out = run_destination(stream)
    assert isinstance(err, AuthenticationError)
    assert res is None and created == []  # no VM was ever created, nothing written
    # the rejected peer was told why (an ERROR frame under the hello key of *our* key)
    assert out.out[:4] == framing.MAGIC and out.out[5] == MsgType.ERROR


def test_valid_scripted_migration_is_accepted() -> None:
    frames, mem = valid_migration_frames()
    res, err, created, _ = run_destination(client_frames(frames))
    assert err is None and res is not None
    assert res.status == "completed", res.error
    assert bytes(created[0].memory()) == mem
    assert created[0].loaded_states is not None and created[0].started


def test_replayed_session_is_rejected() -> None:
    """A recorded session replayed to a server that picks a fresh nonce fails at AUTH."""
    frames, _ = valid_migration_frames()
    recorded = client_frames(frames)
    stream = MemStream(recorded)
    with pytest.raises(AuthenticationError, match="replayed session or wrong key"):
        handshake.server_handshake(stream, KEY)  # os.urandom nonce, not the recorded one


def test_replayed_or_reordered_frame_is_rejected() -> None:
    rec = MemStream()
    channel = FrameChannel(rec, b"k" * 32, b"k" * 32)
    channel.send(MsgType.COMMIT)
    one = bytes(rec.out)
    rd = FrameChannel(MemStream(one + one), b"k" * 32, b"k" * 32)
    rd.recv()
    with pytest.raises(ProtocolError, match="sequence number 0, expected 1"):
        rd.recv()


@pytest.mark.parametrize(("mutate", "exc", "match"), [
    (lambda h: b"XXXX" + h[4:], ProtocolError, "bad frame magic"),
    (lambda h: h[:4] + b"\x09" + h[5:], ProtocolError, "unsupported protocol version 9"),
    (lambda h: h[:5] + b"\x63" + h[6:], ProtocolError, "unknown message type 99"),
    (lambda h: h[:6] + b"\x01\x00" + h[8:], ProtocolError, "reserved"),
    (lambda h: h[:16] + struct.pack("<I", 1 << 30) + h[20:], ProtocolError,
     "more than the limit"),
])
def test_header_checks_come_before_reading_the_payload(mutate, exc, match) -> None:  # type: ignore[no-untyped-def]
    rec = MemStream()
    FrameChannel(rec, b"k" * 32, b"k" * 32).send(MsgType.COMMIT)
    frame = bytes(rec.out)
    bad = mutate(frame[:24])  # header only: the payload is never needed to reject it
    with pytest.raises(exc, match=match):
        FrameChannel(MemStream(bad), b"k" * 32, b"k" * 32).recv()


def test_tampered_payload_fails_the_mac() -> None:
    rec = MemStream()
    FrameChannel(rec, b"k" * 32, b"k" * 32).send(MsgType.LAYOUT, messages.encode_layout(LAYOUT))
    frame = bytearray(rec.out)
    frame[30] ^= 1
    with pytest.raises(AuthenticationError, match="bad MAC"):
        FrameChannel(MemStream(bytes(frame)), b"k" * 32, b"k" * 32).recv()


def test_truncated_stream_is_a_transport_error() -> None:
    rec = MemStream()
    FrameChannel(rec, b"k" * 32, b"k" * 32).send(MsgType.LAYOUT, messages.encode_layout(LAYOUT))
    for cut in (0, 10, 30, len(rec.out) - 1):
        with pytest.raises(TransportError):
            FrameChannel(MemStream(bytes(rec.out[:cut])), b"k" * 32, b"k" * 32).recv()


def test_error_frame_becomes_peer_error() -> None:
    rec = MemStream()
    FrameChannel(rec, b"k" * 32, b"k" * 32).send(
        MsgType.ERROR, framing.encode_error(framing.ErrorCode.VM_SETUP, "no memory\x07"))
    with pytest.raises(PeerError, match="no memory"):
        FrameChannel(MemStream(bytes(rec.out)), b"k" * 32, b"k" * 32).expect(MsgType.READY)


def test_short_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        handshake.client_handshake(MemStream(), b"short")


# --------------------------------------------------------------------------- payloads
LIM = messages.Limits(max_memory_size=1 << 30, max_vcpus=8, guest_kinds=("fake",))


@pytest.mark.parametrize(("lay", "match"), [
    (messages.Layout(PAGES * PS, 1000, 1, 64, "fake"), "power of two"),
    (messages.Layout(PAGES * PS + 1, PS, 1, 64, "fake"), "multiple of the page size"),
    (messages.Layout(0, PS, 1, 64, "fake"), "multiple of the page size"),
    (messages.Layout(2 << 30, PS, 1, 64, "fake"), "exceeds this receiver's limit"),
    (messages.Layout(PAGES * PS, PS, 0, 64, "fake"), "vCPU count 0"),
    (messages.Layout(PAGES * PS, PS, 9, 64, "fake"), "vCPU count 9"),
    (messages.Layout(PAGES * PS, PS, 1, 0, "fake"), "state size"),
    (messages.Layout(PAGES * PS, PS, 1, 64, "kvm-x86"), "not supported here"),
])
def test_layout_validation(lay: messages.Layout, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        messages.decode_layout(messages.encode_layout(lay), LIM)


def test_layout_length_and_text_checks() -> None:
    good = messages.encode_layout(LAYOUT)
    with pytest.raises(ProtocolError):
        messages.decode_layout(good[:-1], LIM)
    with pytest.raises(ProtocolError):
        messages.decode_layout(good[:10], LIM)
    with pytest.raises(ProtocolError, match="ASCII"):
        messages.decode_layout(good[:-4] + b"\xff\xfe\xfd\xfc", LIM)


@pytest.mark.parametrize(("runs", "ndata", "match"), [
    ([(PAGES, 1, 0)], 1, "outside guest memory"),
    ([(2 ** 64 - 1, 2, 0)], 2, "outside guest memory"),
    ([(PAGES - 1, 2, 0)], 2, "past the end"),
    ([(0, 0, 0)], 0, "zero pages"),
    ([(5, 2, 0), (6, 1, 0)], 3, "overlap"),
    ([(5, 1, 0), (2, 1, 0)], 2, "ascending"),
    ([(0, 1, 2)], 0, "unknown kind"),
    ([(0, 2, 0)], 1, "does not match"),
])
def test_pages_validation(runs: list[tuple[int, int, int]], ndata: int, match: str) -> None:
    table = np.zeros(len(runs), dtype=messages.RUN_DTYPE)
    for i, (f, c, k) in enumerate(runs):
        table[i] = (f, c, k, 0)
    payload = messages.encode_pages_head(table, ndata) + bytes(ndata * PS)
    with pytest.raises(ProtocolError, match=match):
        messages.decode_pages(memoryview(payload), LAYOUT)


def test_pages_length_checks() -> None:
    good = pages_payload([(1, 2, messages.RUN_DATA)], bytes(2 * PS))
    for bad in (good[:-1], good + b"\0", good[:7], messages.PAGES_HEAD.pack(0, 0),
                messages.PAGES_HEAD.pack(1000, 0) + good[8:]):
        with pytest.raises(ProtocolError):
            messages.decode_pages(memoryview(bad), LAYOUT)


def test_apply_pages_writes_data_and_zero_runs() -> None:
    mem = bytearray(b"\xee" * (PAGES * PS))
    data = bytes(range(256)) * 16 * 2
    batch = messages.decode_pages(memoryview(pages_payload(
        [(0, 1, messages.RUN_ZERO), (3, 2, messages.RUN_DATA)], data)), LAYOUT)
    touched = np.zeros(PAGES, dtype=np.bool_)
    touched[0] = True
    messages.apply_pages(memoryview(mem), batch, PS, touched)
    assert mem[:PS] == bytes(PS)
    assert mem[3 * PS:5 * PS] == data
    assert mem[PS:3 * PS] == b"\xee" * 2 * PS
    assert touched[3] and touched[4] and not touched[1]


def test_vcpu_state_validation() -> None:
    st = [b"a" * 64]
    ok = b"".join(messages.encode_vcpu_state(st))
    assert messages.decode_vcpu_state(ok, LAYOUT) == st
    with pytest.raises(ProtocolError, match="carries 2 vCPUs"):
        messages.decode_vcpu_state(b"".join(messages.encode_vcpu_state(st * 2)), LAYOUT)
    with pytest.raises(ProtocolError, match="entries have 32 bytes"):
        messages.decode_vcpu_state(b"".join(messages.encode_vcpu_state([b"a" * 32])), LAYOUT)
    with pytest.raises(ProtocolError):
        messages.decode_vcpu_state(ok + b"x", LAYOUT)


def test_small_message_validation() -> None:
    with pytest.raises(ProtocolError):
        messages.decode_iteration_end(messages._ITER.pack(1, 100, 0, 0))
    with pytest.raises(ProtocolError):
        messages.decode_done(messages._DONE.pack(1, 1, 7))
    with pytest.raises(ProtocolError):
        messages.decode_ready(messages._READY.pack(10))
    rep = messages.Report(b"h" * 32, (1,), (2,), 5, 6)
    assert messages.decode_report(messages.encode_report(rep), LAYOUT) == rep
    with pytest.raises(ProtocolError):
        messages.decode_report(
            messages.encode_report(messages.Report(None, (1, 2), (3, 4), 0, 0)), LAYOUT)
    assert framing.decode_error(b"\x01") == (0, "(malformed error message)")


@pytest.mark.parametrize(("text", "expect"), [
    ("127.0.0.1:4444", ("127.0.0.1", 4444)),
    (":0", ("127.0.0.1", 0)),
    ("[::1]:80", ("::1", 80)),
    ("example.org:65535", ("example.org", 65535)),
])
def test_parse_hostport_ok(text: str, expect: tuple[str, int]) -> None:
    assert addresses.parse_hostport(text) == expect


@pytest.mark.parametrize("text", ["", "host", "host:", "host:x", "h:65536", "::1:80", "[::1]80",
                                  "a b:1", "h:-1"])
def test_parse_hostport_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        addresses.parse_hostport(text)


def test_session_frames_use_gmac_and_a_flipped_bit_fails_it() -> None:
    c, s = _pair()
    assert isinstance(c, FrameChannel) and isinstance(s, FrameChannel)
    assert c.mac_name == s.mac_name == "gmac"
    rec = MemStream()
    g1, g2 = handshake.gmac_keys(KEY, b"C" * 32, b"S" * 32)
    tx = FrameChannel(rec, b"k" * 32, b"k" * 32)
    tx.use_gmac(g1, g2)
    tx.send(MsgType.LAYOUT, messages.encode_layout(LAYOUT))
    frame = bytes(rec.out)
    assert len(frame) == (framing.HEADER_SIZE + len(messages.encode_layout(LAYOUT))
                          + macs.GMAC_TAG_SIZE)
    rx = FrameChannel(MemStream(frame), b"k" * 32, b"k" * 32)
    rx.use_gmac(g2, g1)
    assert rx.recv().type is MsgType.LAYOUT
    for pos in (10, 30, len(frame) - 1):  # header (seq), payload, tag
        bad = bytearray(frame)
        bad[pos] ^= 1
        rx = FrameChannel(MemStream(bytes(bad)), b"k" * 32, b"k" * 32)
        rx.use_gmac(g2, g1)
        with pytest.raises((AuthenticationError, ProtocolError)):
            rx.recv()
    rx = FrameChannel(MemStream(frame), b"k" * 32, b"k" * 32)
    rx.use_gmac(g1, g2)  # the other direction's key
    with pytest.raises(AuthenticationError, match="bad MAC"):
        rx.recv()


def test_client_may_ask_for_hmac_for_the_whole_session() -> None:
    a, b = socket.socketpair()
    a.settimeout(5)
    b.settimeout(5)
    out: list[FrameChannel] = []
    th = threading.Thread(target=lambda: out.append(handshake.server_handshake(b, KEY)))
    th.start()
    c = handshake.client_handshake(a, KEY, mac="hmac")
    th.join(10)
    s = out[0]
    assert c.mac_name == s.mac_name == "hmac"
    big = bytes(range(256)) * 1024
    got: list[bytes] = []
    t2 = threading.Thread(target=lambda: got.append(bytes(s.recv().payload)))
    t2.start()
    c.send(MsgType.PAGES, b"y" * 8, big)
    t2.join(10)
    assert got == [b"y" * 8 + big]
    with pytest.raises(ValueError):
        handshake.client_handshake(a, KEY, mac="none")
    a.close()
    b.close()


def test_parse_address_unix() -> None:
    assert addresses.parse_address("unix:/tmp/x.sock") == ("unix:/tmp/x.sock", 0)
    assert addresses.parse_address("127.0.0.1:5") == ("127.0.0.1", 5)
    for bad in ("unix:", "unix:" + "a" * 200):
        with pytest.raises(ValueError):
            addresses.parse_address(bad)


def test_unix_socket_listen_connect_and_refuse_other_files(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from autoconverge.impl.migration.transport import connect, listen, unlink_unix

    addr = f"unix:{tmp_path}/m.sock"
    ls = listen(addr, 0)
    assert (tmp_path / "m.sock").stat().st_mode & 0o077 == 0
    c = connect(addr, 0)
    conn, _ = ls.accept()
    c.sendall(b"ping")
    assert conn.recv(4) == b"ping"
    for s in (c, conn, ls):
        s.close()
    unlink_unix(addr)
    assert not (tmp_path / "m.sock").exists()
    (tmp_path / "file").write_text("keep")
    with pytest.raises(TransportError, match="not a socket"):
        listen(f"unix:{tmp_path}/file", 0)
    assert (tmp_path / "file").read_text() == "keep"
    with pytest.raises(TransportError, match="cannot connect"):
        connect(f"unix:{tmp_path}/absent.sock", 0)


@pytest.mark.parametrize("zero_copy", [False, True])
@pytest.mark.parametrize("scattered", [False, True])
def test_frame_builder_round_trips_mixed_zero_and_data_pages(scattered: bool,
                                                             zero_copy: bool) -> None:
    from autoconverge.impl.migration.pages import FrameBuilder

    rng = np.random.default_rng(5)
    pages, ps = 256, 4096
    mem = np.zeros(pages * ps, dtype=np.uint8)
    for p in rng.choice(pages, 150, replace=False):
        mem[p * ps + int(rng.integers(ps))] = 1 + int(rng.integers(255))  # any byte
    mem[7 * ps:9 * ps] = 3  # nonzero first word
    fb = FrameBuilder(memoryview(mem), ps, 64, zero_copy=zero_copy)
    idx = np.sort(rng.choice(pages, 100, replace=False)) if scattered else np.arange(pages)
    lay = messages.Layout(pages * ps, ps, 1, 64, "fake")
    dest = np.full(pages * ps, 0xEE, dtype=np.uint8)  # zero runs must overwrite this
    for start in range(0, len(idx), 64):
        f = fb.build(idx[start:start + 64])
        payload = memoryview(f.head + bytes(f.data))
        batch = messages.decode_pages(payload, lay)
        messages.apply_pages(memoryview(dest), batch, ps)
        assert f.zero_pages + f.data_pages == f.pages
    got = dest.reshape(pages, ps)[idx]
    assert np.array_equal(got, mem.reshape(pages, ps)[idx])


def test_a_zero_copy_frame_is_the_same_frame_on_the_wire_without_a_copy() -> None:
    """Zero-copy: the data parts are views of guest memory (one per data run), and the
    sealed frame's bytes are those of the gathered frame."""
    from autoconverge.impl.migration.pages import FrameBuilder

    ps = 4096
    mem = np.random.default_rng(9).integers(1, 255, 64 * ps, dtype=np.uint8)
    mem[10 * ps:12 * ps] = 0  # a zero run splits the data into two runs
    idx = np.arange(4, 20, dtype=np.int64)
    copied = FrameBuilder(memoryview(mem), ps, 16).build(idx)
    viewed = FrameBuilder(memoryview(mem), ps, 16, zero_copy=True).build(idx)
    assert len(viewed.parts) == 2 and all(p.obj is not None for p in viewed.parts)
    mem[4 * ps] ^= 0xFF  # a view sees guest memory as it is now; the copy does not
    assert viewed.parts[0][0] == mem[4 * ps] and copied.parts[0][0] != mem[4 * ps]
    mem[4 * ps] ^= 0xFF
    wire = []
    for frame in (copied, viewed):
        rec = MemStream()
        FrameChannel(rec, KEY, KEY).send(MsgType.PAGES, frame.head, *frame.parts)
        wire.append(bytes(rec.out))
    assert wire[0] == wire[1]
