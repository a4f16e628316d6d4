#!/usr/bin/env python3
"""Capture golden Plasma messages from the reference implementation (pyarrow 11).

Runs the reference `plasma-store-server`, puts a recording Unix-socket proxy between it and
the clients, and drives a scripted session with the real pyarrow 11 client (plus a few
hand-built requests for the messages pyarrow cannot send: Abort, RefreshLRU,
CreateAndSealBatch). Every message is written to `tests/golden/<label>.bin`:

* main-socket messages: the whole frame as it crossed the socket (24-byte header + body);
  labels start with `c2s_` (client to store) or `s2c_` (store to client);
* notifications: the 8-byte length and the body, as read from the subscriber socket;
  labels start with `ntf_`.

`tests/golden/MANIFEST` lists the files in capture order with their message types. From the
golden files the script then derives the seed corpus of every fuzz target under
`fuzz/corpus/<target>/` (`--corpus-only` redoes just that step).

Usage (from the repository root):
    .venv/bin/python scripts/capture-golden.py [--venv-python PY] [--corpus-only]

The session is deterministic except for timestamps in List replies (create_time,
construct_duration) and the order of List entries (the store's hash map); the tests allow
for both. The proxy forwards the file descriptors that travel with SCM_RIGHTS (the segment
fds after Create/Get replies, the subscriber socket after a SubscribeRequest), so the client
works exactly as it would against the store directly.
"""

import argparse
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

HEADER = struct.Struct("<qqq")

# Message type numbers (PROTOCOL.md §3.2) used by the capture.
T = dict(
    CreateRequest=1, CreateReply=2, CreateAndSealRequest=3, CreateAndSealReply=4,
    AbortRequest=5, AbortReply=6, SealRequest=7, SealReply=8, GetRequest=9, GetReply=10,
    ReleaseRequest=11, DeleteRequest=13, DeleteReply=14, ContainsRequest=15,
    ContainsReply=16, ListRequest=17, ListReply=18, ConnectRequest=19, ConnectReply=20,
    EvictRequest=21, EvictReply=22, SubscribeRequest=23, SetOptionsRequest=28,
    SetOptionsReply=29, GetDebugStringRequest=30, GetDebugStringReply=31,
    CreateAndSealBatchRequest=32, CreateAndSealBatchReply=33, RefreshLRURequest=34,
    RefreshLRUReply=35,
)
TYPE_NAME = {v: k for k, v in T.items()}

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(REPO, "tests", "golden")
CORPUS = os.path.join(REPO, "fuzz", "corpus")
DEFAULT_STORE = os.path.join(REPO, ".venv", "lib", "python3.11", "site-packages", "pyarrow",
                             "plasma-store-server.reference")
MEMORY = 1000000


# --------------------------------------------------------------------------------------
# Socket helpers


def recv_exact(sock, n):
    """Reads exactly n bytes, or returns None at EOF before the first byte."""
    chunks, have = [], 0
    while have < n:
        b = sock.recv(n - have)
        if not b:
            if have == 0:
                return None
            raise EOFError("EOF inside a message")
        chunks.append(b)
        have += len(b)
    return b"".join(chunks)


def read_frame(sock):
    head = recv_exact(sock, HEADER.size)
    if head is None:
        return None
    _version, mtype, length = HEADER.unpack(head)
    body = recv_exact(sock, length) if length else b""
    return mtype, head + body


def pass_fd(src, dst):
    """Moves one (1 byte + SCM_RIGHTS fd) message from src to dst."""
    msg, fds, _flags, _addr = socket.recv_fds(src, 1, 1)
    if len(msg) != 1 or len(fds) != 1:
        raise RuntimeError(f"expected one byte with one fd, got {msg!r} {fds}")
    socket.send_fds(dst, [msg], fds)
    for fd in fds:
        os.close(fd)


# --------------------------------------------------------------------------------------
# A minimal FlatBuffers reader (for the proxy: which fds follow a reply)


def u16(b, p):
    return struct.unpack_from("<H", b, p)[0]


def i32(b, p):
    return struct.unpack_from("<i", b, p)[0]


def u32(b, p):
    return struct.unpack_from("<I", b, p)[0]


def field_pos(body, table, slot):
    vtable = table - i32(body, table)
    vt_len = u16(body, vtable)
    entry = 4 + 2 * slot
    if entry >= vt_len:
        return None
    off = u16(body, vtable + entry)
    return table + off if off else None


def scalar_i32(body, table, slot):
    p = field_pos(body, table, slot)
    return 0 if p is None else i32(body, p)


def i32_vector(body, table, slot):
    p = field_pos(body, table, slot)
    if p is None:
        return []
    v = p + u32(body, p)
    return [i32(body, v + 4 + 4 * i) for i in range(u32(body, v))]


def fds_announced(mtype, body):
    """Segment ids whose fd may follow this store-to-client message."""
    if mtype == T["CreateReply"]:
        table = u32(body, 0)
        if scalar_i32(body, table, 2) == 0:  # error == OK
            return [scalar_i32(body, table, 3)]  # store_fd
    if mtype == T["GetReply"]:
        return i32_vector(body, u32(body, 0), 2)  # store_fds
    return []


# --------------------------------------------------------------------------------------
# The recording proxy (its own process, so the client's blocking calls cannot stall it)


def proxy_main(listen_path, upstream_path, outdir):
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(listen_path)
    lsock.listen(16)
    conn_no = 0
    while True:
        client, _ = lsock.accept()
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        upstream.connect(upstream_path)
        for target, args in ((pump_c2s, (client, upstream)), (pump_s2c, (upstream, client))):
            threading.Thread(target=target, args=args + (outdir, conn_no), daemon=True).start()
        conn_no += 1


RECORD_LOCK = threading.Lock()
RECORD_SEQ = [0]


def record(outdir, conn, direction, mtype, frame):
    """Writes one message as <global sequence>_conn<N>_<direction>_<type>.bin."""
    with RECORD_LOCK:
        seq = RECORD_SEQ[0]
        RECORD_SEQ[0] += 1
    name = f"{seq:05d}_conn{conn}_{direction}_{mtype}.bin"
    with open(os.path.join(outdir, name + ".tmp"), "wb") as f:
        f.write(frame)
    os.rename(os.path.join(outdir, name + ".tmp"), os.path.join(outdir, name))


def pump_c2s(client, upstream, outdir, conn):
    while True:
        got = read_frame(client)
        if got is None:
            upstream.shutdown(socket.SHUT_WR)
            return
        mtype, frame = got
        record(outdir, conn, "c2s", mtype, frame)
        upstream.sendall(frame)
        if mtype == T["SubscribeRequest"]:
            pass_fd(client, upstream)


def pump_s2c(upstream, client, outdir, conn):
    seen = set()
    while True:
        got = read_frame(upstream)
        if got is None:
            client.shutdown(socket.SHUT_WR)
            return
        mtype, frame = got
        record(outdir, conn, "s2c", mtype, frame)
        client.sendall(frame)
        # The store sends one fd per segment this connection has not seen yet (§2.2).
        for seg in fds_announced(mtype, frame[HEADER.size:]):
            if seg not in seen:
                seen.add(seg)
                pass_fd(upstream, client)


# --------------------------------------------------------------------------------------
# A minimal front-to-back FlatBuffers writer for the hand-built requests.
#
# Layout: root offset, vtable, table, then every referenced string/vector after the table
# (uoffsets only point forward). This differs from what both the C++ and the Rust builders
# produce (back to front, vtable after the table), which makes these messages a useful check
# that decoding does not depend on layout.


class Fb:
    def __init__(self):
        self.buf = bytearray()

    def align(self, n):
        while len(self.buf) % n:
            self.buf.append(0)

    def string(self, data):
        self.align(4)
        pos = len(self.buf)
        self.buf += struct.pack("<I", len(data)) + data + b"\0"
        return pos

    def table(self, fields):
        """fields: list of (slot, kind, value); kind in 'u8', 'i64', 'u64', 'i32', 'str',
        'strvec'. Returns the finished buffer with the table as root."""
        nslots = max((s for s, _, _ in fields), default=-1) + 1
        self.buf += b"\0\0\0\0"  # root uoffset, patched below
        vtable = len(self.buf)
        self.buf += b"\0" * (4 + 2 * nslots)
        self.align(8)
        if len(self.buf) % 8 == 0:  # keep 8-byte fields aligned: soffset at 8k+4
            self.buf += b"\0\0\0\0"
        table = len(self.buf)
        self.buf += struct.pack("<i", table - vtable)
        sizes = dict(u8=1, i32=4, i64=8, u64=8, str=4, strvec=4)
        fmts = dict(u8="<B", i32="<i", i64="<q", u64="<Q", str="<I", strvec="<I")
        slot_off, refs = {}, []
        for slot, kind, value in sorted(fields, key=lambda f: -sizes[f[1]]):
            self.align(sizes[kind])
            pos = len(self.buf)
            slot_off[slot] = pos - table
            self.buf += struct.pack(fmts[kind], 0 if kind in ("str", "strvec") else value)
            if kind in ("str", "strvec"):
                refs.append((pos, kind, value))
        table_size = len(self.buf) - table
        struct.pack_into("<HH", self.buf, vtable, 4 + 2 * nslots, table_size)
        for slot, off in slot_off.items():
            struct.pack_into("<H", self.buf, vtable + 4 + 2 * slot, off)
        struct.pack_into("<I", self.buf, 0, table)
        for pos, kind, value in refs:
            if kind == "str":
                target = self.string(value)
            else:
                self.align(4)
                target = len(self.buf)
                self.buf += struct.pack("<I", len(value)) + b"\0" * (4 * len(value))
                for i, item in enumerate(value):
                    s = self.string(item)
                    elem = target + 4 + 4 * i
                    struct.pack_into("<I", self.buf, elem, s - elem)
            struct.pack_into("<I", self.buf, pos, target - pos)
        self.align(4)
        return bytes(self.buf)


def frame(mtype, body):
    return HEADER.pack(0, mtype, len(body)) + body


# --------------------------------------------------------------------------------------
# The session


def oid(fill):
    return bytes([fill]) * 20


ID1 = bytes(range(1, 21))
ID2 = oid(0x22)
ID3 = oid(0x33)
ID4 = oid(0x44)
ID5 = oid(0x55)
IDR = oid(0x66)  # created and aborted by the raw client
IDB = [oid(0xB1), oid(0xB2), oid(0xB3)]  # the batch
MISSING = oid(0xEE)


class Session:
    def __init__(self):
        import pyarrow.plasma as plasma
        self.plasma = plasma
        self.expect = {}  # conn -> [(direction, type, label)]
        self.notifications = []  # (label, bytes)

    def exp(self, conn, direction, tname, label):
        self.expect.setdefault(conn, []).append((direction, T[tname], label))

    def req(self, conn, tname, label):
        self.exp(conn, "c2s", tname, label)

    def rep(self, conn, tname, label):
        self.exp(conn, "s2c", tname, label)

    def notify(self, sock, labels):
        """Reads len(labels) notifications from the subscriber socket."""
        for label in labels:
            r, _, _ = select.select([sock], [], [], 5)
            if not r:
                raise RuntimeError(f"no notification for {label}")
            head = recv_exact(sock, 8)
            (n,) = struct.unpack("<q", head)
            self.notifications.append((label, head + recv_exact(sock, n)))

    def no_more_notifications(self, sock):
        r, _, _ = select.select([sock], [], [], 0.2)
        if r:
            raise RuntimeError("unexpected notification")

    def run(self, proxy_sock):
        plasma = self.plasma
        ObjectID = plasma.ObjectID
        A, B, R = 0, 1, 2

        a = plasma.connect(proxy_sock, num_retries=10)
        self.req(A, "ConnectRequest", "c2s_connect_request")
        self.rep(A, "ConnectReply", "s2c_connect_reply")

        a.subscribe()
        self.req(A, "SubscribeRequest", "c2s_subscribe_request")
        nsock = a.get_notification_socket()

        # Before any object exists: an impossible create evicts everything evictable.
        try:
            a.create(ObjectID(ID5), 2 * MEMORY)
            raise AssertionError("create larger than the store succeeded")
        except plasma.PlasmaStoreFull:
            pass
        self.req(A, "CreateRequest", "c2s_create_request_too_large")
        self.rep(A, "CreateReply", "s2c_create_reply_out_of_memory")

        buf = a.create(ObjectID(ID1), 16, b"MD")
        self.req(A, "CreateRequest", "c2s_create_request")
        self.rep(A, "CreateReply", "s2c_create_reply")
        memoryview(buf).cast("B")[:] = b"\xab" * 16

        a.list()
        self.req(A, "ListRequest", "c2s_list_request")
        self.rep(A, "ListReply", "s2c_list_reply_unsealed")

        a.seal(ObjectID(ID1))
        self.req(A, "SealRequest", "c2s_seal_request")
        self.rep(A, "SealReply", "s2c_seal_reply")
        self.notify(nsock, ["ntf_seal"])
        del buf
        self.req(A, "ReleaseRequest", "c2s_release_request")

        got = a.get_buffers([ObjectID(ID1), ObjectID(MISSING)], timeout_ms=0)
        assert got[0] is not None and got[1] is None, got
        self.req(A, "GetRequest", "c2s_get_request")
        self.rep(A, "GetReply", "s2c_get_reply_present_and_missing")
        del got
        self.req(A, "ReleaseRequest", "c2s_release_request_after_get")

        assert a.contains(ObjectID(ID1))
        self.req(A, "ContainsRequest", "c2s_contains_request")
        self.rep(A, "ContainsReply", "s2c_contains_reply_true")
        assert not a.contains(ObjectID(MISSING))
        self.req(A, "ContainsRequest", "c2s_contains_request_missing")
        self.rep(A, "ContainsReply", "s2c_contains_reply_false")

        a.create_and_seal(ObjectID(ID2), b"hello world", b"meta")
        self.req(A, "CreateAndSealRequest", "c2s_create_and_seal_request")
        self.rep(A, "CreateAndSealReply", "s2c_create_and_seal_reply")
        self.notify(nsock, ["ntf_seal_create_and_seal"])

        try:
            a.create_and_seal(ObjectID(ID2), b"again", b"")
            raise AssertionError("create_and_seal of an existing id succeeded")
        except plasma.PlasmaObjectExists:
            pass
        self.req(A, "CreateAndSealRequest", "c2s_create_and_seal_request_no_metadata")
        self.rep(A, "CreateAndSealReply", "s2c_create_and_seal_reply_exists")

        try:
            a.create(ObjectID(ID1), 100)
            raise AssertionError("create of an existing id succeeded")
        except plasma.PlasmaObjectExists:
            pass
        self.req(A, "CreateRequest", "c2s_create_request_no_metadata")
        self.rep(A, "CreateReply", "s2c_create_reply_exists")

        a.list()
        self.req(A, "ListRequest", "c2s_list_request_2")
        self.rep(A, "ListReply", "s2c_list_reply_sealed")

        b = plasma.connect(proxy_sock, num_retries=10)
        self.req(B, "ConnectRequest", "c2s_connect_request_b")
        self.rep(B, "ConnectReply", "s2c_connect_reply_b")

        b_held = b.get_buffers([ObjectID(ID1)], timeout_ms=-1)
        self.req(B, "GetRequest", "c2s_get_request_wait")
        self.rep(B, "GetReply", "s2c_get_reply_present_with_fd")

        b_buf3 = b.create(ObjectID(ID3), 8)
        self.req(B, "CreateRequest", "c2s_create_request_b")
        self.rep(B, "CreateReply", "s2c_create_reply_b")

        a.delete([ObjectID(ID1), ObjectID(ID3), ObjectID(MISSING)])
        self.req(A, "DeleteRequest", "c2s_delete_request_mixed")
        self.rep(A, "DeleteReply", "s2c_delete_reply_mixed")

        a.delete([ObjectID(ID2)])
        self.req(A, "DeleteRequest", "c2s_delete_request")
        self.rep(A, "DeleteReply", "s2c_delete_reply_ok")
        self.notify(nsock, ["ntf_deletion"])

        b.seal(ObjectID(ID3))
        self.req(B, "SealRequest", "c2s_seal_request_b")
        self.rep(B, "SealReply", "s2c_seal_reply_b")
        self.notify(nsock, ["ntf_seal_b"])
        del b_buf3  # count 0: Release, and the deferred deletion happens
        self.req(B, "ReleaseRequest", "c2s_release_request_b3")
        self.notify(nsock, ["ntf_deferred_deletion_3"])
        del b_held
        self.req(B, "ReleaseRequest", "c2s_release_request_b1")
        self.notify(nsock, ["ntf_deferred_deletion_1"])

        a.create_and_seal(ObjectID(ID4), b"x" * 100, b"")
        self.req(A, "CreateAndSealRequest", "c2s_create_and_seal_request_4")
        self.rep(A, "CreateAndSealReply", "s2c_create_and_seal_reply_4")
        a.create_and_seal(ObjectID(ID5), b"", b"m")
        self.req(A, "CreateAndSealRequest", "c2s_create_and_seal_request_empty_data")
        self.rep(A, "CreateAndSealReply", "s2c_create_and_seal_reply_5")
        self.notify(nsock, ["ntf_seal_4", "ntf_seal_5"])

        freed = a.evict(50)
        assert freed == 100, freed
        self.req(A, "EvictRequest", "c2s_evict_request")
        self.rep(A, "EvictReply", "s2c_evict_reply")
        self.notify(nsock, ["ntf_evict_deletion"])

        a.debug_string()
        self.req(A, "GetDebugStringRequest", "c2s_debug_string_request")
        self.rep(A, "GetDebugStringReply", "s2c_debug_string_reply")

        got = a.get_buffers([ObjectID(MISSING)], timeout_ms=10)
        assert got == [None], got
        self.req(A, "GetRequest", "c2s_get_request_timeout")
        self.rep(A, "GetReply", "s2c_get_reply_all_missing")

        b.set_client_options("golden_client", 300000)
        self.req(B, "SetOptionsRequest", "c2s_set_options_request")
        self.rep(B, "SetOptionsReply", "s2c_set_options_reply_ok")
        try:
            b.set_client_options("again", 1000)
            raise AssertionError("a second quota was accepted")
        except plasma.PlasmaStoreFull:
            pass
        self.req(B, "SetOptionsRequest", "c2s_set_options_request_again")
        self.rep(B, "SetOptionsReply", "s2c_set_options_reply_refused")

        b.debug_string()
        self.req(B, "GetDebugStringRequest", "c2s_debug_string_request_b")
        self.rep(B, "GetDebugStringReply", "s2c_debug_string_reply_with_quota")

        # The raw client: messages pyarrow does not send, built by hand.
        r = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        r.connect(proxy_sock)

        def call(req_type, body, rep_type, req_label, rep_label):
            r.sendall(frame(T[req_type], body))
            self.req(R, req_type, req_label)
            if rep_type is None:
                return None
            mtype, f = read_frame(r)
            assert mtype == T[rep_type], (mtype, rep_type)
            self.rep(R, rep_type, rep_label)
            return f

        f = call("CreateRequest", Fb().table([(0, "str", IDR), (1, "u8", 1), (2, "u64", 10),
                                              (3, "u64", 0)]),
                 "CreateReply", "c2s_create_request_crafted", "s2c_create_reply_r")
        for seg in fds_announced(T["CreateReply"], f[HEADER.size:]):
            _msg, fds, _, _ = socket.recv_fds(r, 1, 1)
            for fd in fds:
                os.close(fd)
        call("AbortRequest", Fb().table([(0, "str", IDR)]),
             "AbortReply", "c2s_abort_request_crafted", "s2c_abort_reply")
        call("RefreshLRURequest", Fb().table([(0, "strvec", [ID5, MISSING])]),
             "RefreshLRUReply", "c2s_refresh_lru_request_crafted", "s2c_refresh_lru_reply")
        digests = [bytes([i]) * 8 for i in (1, 2, 3)]
        batch = Fb().table([(0, "strvec", IDB), (1, "u8", 1),
                            (2, "strvec", [b"one", b"", b"three"]),
                            (3, "strvec", [b"", b"m2", b"m3"]), (4, "strvec", digests)])
        call("CreateAndSealBatchRequest", batch, "CreateAndSealBatchReply",
             "c2s_create_and_seal_batch_request_crafted", "s2c_create_and_seal_batch_reply")
        self.notify(nsock, ["ntf_batch_seal"])
        batch = Fb().table([(0, "strvec", [oid(0xB4), IDB[0]]), (1, "u8", 1),
                            (2, "strvec", [b"4", b"dup"]), (3, "strvec", [b"", b""]),
                            (4, "strvec", digests[:2])])
        call("CreateAndSealBatchRequest", batch, "CreateAndSealBatchReply",
             "c2s_create_and_seal_batch_request_crafted_dup",
             "s2c_create_and_seal_batch_reply_exists")
        call("ContainsRequest", Fb().table([(0, "str", IDB[2])]),
             "ContainsReply", "c2s_contains_request_crafted", "s2c_contains_reply_batch")
        call("DeleteRequest", Fb().table([(0, "i32", 2), (1, "strvec", IDB[:2])]),
             "DeleteReply", "c2s_delete_request_crafted", "s2c_delete_reply_two")
        self.notify(nsock, ["ntf_deletion_b1", "ntf_deletion_b2"])
        call("GetRequest", Fb().table([(0, "strvec", [IDB[2], IDB[2]]), (1, "i64", 0)]),
             "GetReply", "c2s_get_request_crafted_duplicates", "s2c_get_reply_duplicates")
        call("ReleaseRequest", Fb().table([(0, "str", IDB[2])]), None,
             "c2s_release_request_crafted", None)
        call("GetRequest", Fb().table([(0, "strvec", [])]), "GetReply",
             "c2s_get_request_crafted_empty", "s2c_get_reply_empty")
        call("CreateRequest", Fb().table([(0, "str", oid(0x77)), (2, "u64", 1), (4, "i32", 1)]),
             "CreateReply", "c2s_create_request_crafted_device", "s2c_create_reply_device")
        self.no_more_notifications(nsock)
        r.close()
        b.disconnect()
        a.disconnect()


def wait_for(path, what, timeout=10):
    deadline = time.time() + timeout
    while not os.path.exists(path):
        if time.time() > deadline:
            raise RuntimeError(f"{what} did not create {path}")
        time.sleep(0.02)


def capture(store):
    tmp = tempfile.mkdtemp(prefix="plasma-golden-")
    store_sock = os.path.join(tmp, "store.sock")
    proxy_sock = os.path.join(tmp, "proxy.sock")
    rawdir = os.path.join(tmp, "raw")
    os.mkdir(rawdir)
    daemon = subprocess.Popen([store, "-m", str(MEMORY), "-s", store_sock],
                              stderr=open(os.path.join(tmp, "store.log"), "wb"))
    proxy = None
    try:
        wait_for(store_sock, "the store")
        proxy = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--proxy",
                                  proxy_sock, store_sock, rawdir])
        wait_for(proxy_sock, "the proxy")
        session = Session()
        session.run(proxy_sock)
        time.sleep(0.3)  # let the proxy record the last messages
    finally:
        if proxy is not None:
            proxy.kill()
            proxy.wait()
        daemon.terminate()
        daemon.wait()
    if daemon.returncode != 0:
        sys.stderr.write(open(os.path.join(tmp, "store.log")).read())
        raise RuntimeError(f"the store exited with {daemon.returncode}")

    # Match the recorded messages, per connection and direction, with the expected ones.
    shutil.rmtree(GOLDEN, ignore_errors=True)
    os.makedirs(GOLDEN)
    manifest = []
    recorded = sorted(os.listdir(rawdir))
    for conn, expected in sorted(session.expect.items()):
        for direction in ("c2s", "s2c"):
            want = [e for e in expected if e[0] == direction]
            got = [n for n in recorded if f"_conn{conn}_{direction}_" in n]
            got_types = [int(n.rsplit("_", 1)[1][:-4]) for n in got]
            if got_types != [t for _, t, _ in want]:
                raise RuntimeError(f"connection {conn} {direction}: recorded {got_types}, "
                                   f"expected {[t for _, t, _ in want]}")
            for name, (_, mtype, label) in zip(got, want):
                shutil.copy(os.path.join(rawdir, name), os.path.join(GOLDEN, label + ".bin"))
                manifest.append((name, label, TYPE_NAME[mtype]))
    for label, data in session.notifications:
        with open(os.path.join(GOLDEN, label + ".bin"), "wb") as f:
            f.write(data)
        manifest.append(("notification", label, "Notification"))
    manifest.sort(key=lambda m: (m[0] == "notification", m[0]))  # capture order
    with open(os.path.join(GOLDEN, "MANIFEST"), "w") as f:
        f.write("# Captured by scripts/capture-golden.py from pyarrow 11 and plasma-store-server "
                "11.0.0 (-m %d),\n# main-socket messages in capture order, then the notifications.\n"
                "# label type\n" % MEMORY)
        for _, label, tname in manifest:
            f.write(f"{label} {tname}\n")
    shutil.rmtree(tmp)
    print(f"captured {len(manifest)} messages into {GOLDEN}")


# --------------------------------------------------------------------------------------
# Seed corpora for the fuzz targets, derived from the golden files


def golden_files():
    for name in sorted(os.listdir(GOLDEN)):
        if name.endswith(".bin"):
            with open(os.path.join(GOLDEN, name), "rb") as f:
                yield name[:-4], f.read()


def write_corpus():
    targets = ("frame_decoder", "decode_request", "decode_reply", "decode_notification",
               "roundtrip")
    for t in targets:
        shutil.rmtree(os.path.join(CORPUS, t), ignore_errors=True)
        os.makedirs(os.path.join(CORPUS, t))

    def put(target, name, data):
        with open(os.path.join(CORPUS, target, name), "wb") as f:
            f.write(data)

    streams = {"c2s": b"", "s2c": b""}
    for label, data in golden_files():
        if label.startswith("ntf_"):
            put("decode_notification", label, data[8:])
            put("roundtrip", label, data[8:])
            continue
        direction = label[:3]
        _v, mtype, _len = HEADER.unpack_from(data)
        body = data[HEADER.size:]
        # decode_request / decode_reply: one byte selecting the type, then the body.
        put("decode_request" if direction == "c2s" else "decode_reply", label,
            bytes([mtype]) + body)
        put("roundtrip", label, body)
        # frame_decoder: chunking seed, max_body (u16 LE), then the byte stream.
        put("frame_decoder", label, bytes([len(label) % 256]) + struct.pack("<H", 0xFFFF) + data)
        streams[direction] += data
    for direction, data in streams.items():
        put("frame_decoder", f"stream_{direction}_seed1", b"\x01" + struct.pack("<H", 0xFFFF) + data)
        put("frame_decoder", f"stream_{direction}_small_limit",
            b"\x07" + struct.pack("<H", 64) + data)
    print(f"wrote seed corpora under {CORPUS}")


def main():
    if len(sys.argv) == 5 and sys.argv[1] == "--proxy":
        proxy_main(*sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", default=DEFAULT_STORE, help="plasma-store-server to run")
    ap.add_argument("--corpus-only", action="store_true",
                    help="only rebuild fuzz/corpus from tests/golden")
    args = ap.parse_args()
    if not args.corpus_only:
        capture(args.store)
    write_corpus()


if __name__ == "__main__":
    main()
