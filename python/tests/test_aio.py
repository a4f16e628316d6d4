"""The asyncio client (``plasma_store.aio``) against a real store: every call, many gets
waiting at once on one client and woken by another process's seals, cancellation, and the
notification stream."""

import asyncio

import pytest

import plasma_store as plasma
import plasma_store.aio
from conftest import run_python

SEAL_IN_CHILD = """
import sys, plasma_store as plasma
c = plasma.connect(sys.argv[1])
for h in sys.argv[2:]:
    oid = plasma.ObjectID(bytes.fromhex(h))
    buf = memoryview(c.create(oid, 8, b"m")).cast("B")
    buf[:] = bytes.fromhex(h)[:8]
    c.seal(oid)
print("sealed", len(sys.argv) - 2)
"""


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def until(predicate):
    """Yields to the loop until ``predicate()`` holds (the test's 60 s bound ends it)."""
    while not predicate():
        await asyncio.sleep(0.005)


def refs(client, object_id):
    return client.list()[object_id]["ref_count"]


def test_every_call_round_trips(store):
    async def main():
        async with await plasma_store.aio.connect(store[0]) as c:
            assert c.store_capacity() == 10 ** 8
            oid = await c.put({"a": [1, 2, 3]})
            assert await c.get(oid) == {"a": [1, 2, 3]}
            assert await c.get([oid], timeout_ms=0) == [{"a": [1, 2, 3]}]
            assert await c.contains(oid)

            rid = plasma.ObjectID(b"r" * 20)
            buf = await c.create(rid, 5, b"meta")
            memoryview(buf).cast("B")[:] = b"hello"
            del buf
            await c.seal(rid)
            (meta, data), = await c.get_buffers([rid], with_meta=True)
            assert (meta, data.to_pybytes()) == (b"meta", b"hello")
            del data
            (m,) = await c.get_metadata([rid])
            assert m.to_pybytes() == b"meta"
            del m
            assert len(await c.hash(rid)) == 8

            xid = await c.put_raw_buffer(b"raw", metadata=b"x")
            cid = plasma.ObjectID(b"c" * 20)
            await c.create_and_seal(cid, b"inline")
            listing = await c.list()
            assert set(listing) == {oid, rid, xid, cid}
            assert listing[cid]["data_size"] == 6

            missing = plasma.ObjectID(b"z" * 20)
            assert await c.get_buffers([missing], timeout_ms=0) == [None]
            assert await c.get_buffers([missing], timeout_ms=0, with_meta=True) == \
                [(None, None)]
            assert await c.get(missing, timeout_ms=20) is plasma.ObjectNotAvailable
            assert c.waiting_gets == 0

            with pytest.raises(plasma.PlasmaObjectExists):
                await c.create_and_seal(cid, b"again")
            await c.delete([oid, rid])
            assert not await c.contains(oid)
            assert await c.evict(1 << 30) == 3 + 1 + 6, "xid and cid are left"
            assert "allocated bytes: 0" in await c.debug_string()
        # close() disconnected; later calls fail instead of hanging.
        with pytest.raises(plasma.PlasmaError):
            await c.contains(cid)
    run(main())


def test_a_hundred_gets_wait_at_once_and_seals_from_another_process_wake_them(store):
    path = store[0]
    ids = [plasma.ObjectID(bytes([i]) * 20) for i in range(100)]
    observer = plasma.connect(path)

    async def main():
        async with await plasma_store.aio.connect(path) as c:
            ticks = 0

            async def ticker():
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0.001)
            tick_task = asyncio.create_task(ticker())
            gets = [asyncio.create_task(c.get_buffers([oid], timeout_ms=-1)) for oid in ids]
            await until(lambda: c.waiting_gets == 100)
            # All hundred wait together, and the loop and the client still serve others.
            before = ticks
            assert await c.contains(ids[0]) is False
            other = await c.put(b"unrelated")
            assert await c.get(other) == b"unrelated"
            await until(lambda: ticks > before + 3)
            assert not any(g.done() for g in gets)

            # Another process seals them all; no get was asked again in between.
            proc = asyncio.create_task(asyncio.to_thread(
                run_python, SEAL_IN_CHILD, path, *[oid.binary().hex() for oid in ids]))
            results = await asyncio.gather(*gets)
            assert (await proc).stdout.strip() == "sealed 100"
            for oid, (buf,) in zip(ids, results):
                assert buf.to_pybytes() == oid.binary()[:8]
            assert c.waiting_gets == 0
            # Each object is referenced once, by this client, while its buffer lives.
            assert all(refs(observer, oid) == 1 for oid in ids)
            del results, buf, gets  # the tasks hold their results too
            await until(lambda: all(refs(observer, oid) == 0 for oid in ids))
            tick_task.cancel()
    run(main())


def test_a_cancelled_get_leaves_no_reference(store):
    path = store[0]
    oid = plasma.ObjectID(b"q" * 20)
    other = plasma.connect(path)

    async def main():
        async with await plasma_store.aio.connect(path) as c:
            waiting = asyncio.create_task(c.get_buffers([oid]))
            second = asyncio.create_task(c.get_buffers([oid]))
            await until(lambda: c.waiting_gets == 2)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            assert c.waiting_gets == 1
            other.put_raw_buffer(b"payload", object_id=oid)
            (buf,) = await second
            assert buf.to_pybytes() == b"payload"
            assert refs(other, oid) == 1, "only the get that was not cancelled holds it"
            del buf, second  # the task holds its result too
            await until(lambda: refs(other, oid) == 0)

            # Cancelled while its fetch is in flight (the object is sealed): whatever it
            # fetched is released.
            for _ in range(20):
                t = asyncio.create_task(c.get_buffers([oid]))
                await asyncio.sleep(0)
                t.cancel()
                try:
                    await t
                except asyncio.CancelledError:
                    pass
            await until(lambda: refs(other, oid) == 0)
            assert c.waiting_gets == 0
    run(main())


def test_gets_for_several_objects_and_timeouts(store):
    path = store[0]
    writer = plasma.connect(path)
    a, b = plasma.ObjectID(b"a" * 20), plasma.ObjectID(b"b" * 20)

    async def main():
        async with await plasma_store.aio.connect(path) as c:
            writer.put_raw_buffer(b"A", object_id=a)
            # b never comes: the timeout returns what is there.
            got = await c.get_buffers([a, b, a], timeout_ms=50)
            assert got[0].to_pybytes() == b"A" and got[1] is None
            assert got[2].to_pybytes() == b"A"
            del got
            both = asyncio.create_task(c.get_buffers([a, b]))
            await until(lambda: c.waiting_gets == 1)
            writer.put_raw_buffer(b"B", object_id=b)
            got = await both
            assert [x.to_pybytes() for x in got] == [b"A", b"B"]
            del got, both
    run(main())


def test_a_get_waits_for_the_clients_own_unsealed_object(store):
    async def main():
        async with await plasma_store.aio.connect(store[0]) as c:
            oid = plasma.ObjectID(b"u" * 20)
            buf = await c.create(oid, 3)
            waiting = asyncio.create_task(c.get_buffers([oid]))
            await until(lambda: c.waiting_gets == 1)
            memoryview(buf).cast("B")[:] = b"own"
            del buf
            await c.seal(oid)
            (got,) = await waiting
            assert got.to_pybytes() == b"own"
    run(main())


def test_close_ends_waiting_gets(store):
    async def main():
        c = await plasma_store.aio.connect(store[0])
        waiting = asyncio.create_task(c.get_buffers([plasma.ObjectID(b"n" * 20)]))
        await until(lambda: c.waiting_gets == 1)
        await c.close()
        with pytest.raises(plasma.PlasmaError):
            await waiting
    run(main())


def test_notifications_stream_seals_and_deletions(store):
    path = store[0]
    writer = plasma.connect(path)
    first = writer.put_raw_buffer(b"before", metadata=b"mm")

    async def main():
        async with await plasma_store.aio.connect(path) as c:
            stream = c.notifications()
            # Already sealed objects come first.
            assert await stream.__anext__() == (first, 6, 2)
            second = writer.put_raw_buffer(b"12345")
            assert await stream.__anext__() == (second, 5, 0)
            writer.delete([first])
            assert await stream.__anext__() == (first, -1, -1)
            await stream.aclose()

            # A new stream starts with what is sealed then (in the store's order).
            seen = set()
            third = await c.put_raw_buffer(b"xyz")
            async for object_id, data_size, metadata_size in c.notifications():
                seen.add((object_id, data_size, metadata_size))
                if len(seen) == 2:
                    break
            assert seen == {(second, 5, 0), (third, 3, 0)}
    run(main())
