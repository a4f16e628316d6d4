"""An asyncio client for the Plasma store: ``client = await plasma_store.aio.connect(path)``.

Every call of :class:`plasma_store.PlasmaClient` has an awaitable counterpart here, and none
of them blocks the event loop:

* Calls that the store answers at once (create, seal, put, contains, delete, list, evict...)
  run on one worker thread owned by the client, with the GIL released while they talk to the
  store.
* Gets that may wait never wait inside the store. The client keeps a second connection that
  is subscribed to the store's notifications and read by the event loop itself. A waiting get
  asks the store for its objects without waiting (timeout 0); for those not sealed yet it
  waits on an ``asyncio.Event`` that the notification of their seal sets, then asks again,
  until it has them all or its timeout ends. So any number of gets can wait at once on one
  client, none of them holds up the others or the loop, and a waiting get holds nothing in
  the store: cancelling it leaves no reference behind (buffers a get has obtained keep their
  object referenced only while they are alive, as in the blocking client).

The store handles requests in order, so nothing is missed between the two connections: a get
that finds an object missing was answered before that object's seal, whose notification then
arrives on the subscribed connection.

``async for object_id, data_size, metadata_size in client.notifications()`` reads a fresh
subscription of its own (sizes are -1 for deleted or evicted objects; objects already sealed
are announced first, as with ``subscribe``). It reads only as fast as the loop consumes it.
"""

import asyncio
import concurrent.futures
import functools
import struct

from . import _plasma
from ._plasma import ObjectID, ObjectNotAvailable

__all__ = ["AsyncPlasmaClient", "connect"]

#: Frames of the notification stream: an 8-byte native-endian length, then the body.
_LENGTH = struct.Struct("=q")
#: Largest notification body accepted (a batch seal of many objects is one message).
_MAX_NOTIFICATION = 64 << 20


async def connect(store_socket_name, num_retries=-1):
    """Connects to the store on ``store_socket_name``; returns an :class:`AsyncPlasmaClient`.

    Like :func:`plasma_store.connect` (same retries), without blocking the event loop.
    """
    loop = asyncio.get_running_loop()
    executor = concurrent.futures.ThreadPoolExecutor(
        max_workers=1, thread_name_prefix="plasma-aio")
    try:
        open_ = functools.partial(_plasma.connect, store_socket_name,
                                  num_retries=num_retries)
        client = await loop.run_in_executor(executor, open_)
        watcher = await loop.run_in_executor(executor, open_)
        await loop.run_in_executor(executor, watcher.subscribe)
    except BaseException:
        executor.shutdown(wait=False)
        raise
    return AsyncPlasmaClient(client, watcher, executor, store_socket_name)


class _Frames:
    """Reads length-prefixed notification bodies from a non-blocking socket, on the loop."""

    def __init__(self, sock):
        self._sock = sock
        self._buf = bytearray()

    async def next(self):
        """The next body, or None once the store has closed the stream."""
        loop = asyncio.get_running_loop()
        while True:
            if len(self._buf) >= _LENGTH.size:
                (n,) = _LENGTH.unpack_from(self._buf)
                if n < 0 or n > _MAX_NOTIFICATION:
                    raise _plasma_error(f"bad notification length {n}")
                if len(self._buf) >= _LENGTH.size + n:
                    body = bytes(self._buf[_LENGTH.size:_LENGTH.size + n])
                    del self._buf[:_LENGTH.size + n]
                    return body
            chunk = await loop.sock_recv(self._sock, 1 << 16)
            if not chunk:
                return None
            self._buf += chunk


def _plasma_error(message):
    from .exceptions import PlasmaError
    return PlasmaError(message)


class AsyncPlasmaClient:
    """An asyncio connection to a Plasma store; made by :func:`connect`. See the module's
    documentation for how waiting gets work. Usable as ``async with``."""

    def __init__(self, client, watcher, executor, socket_name):
        self._client = client
        self._watcher = watcher
        self._executor = executor
        self._socket_name = socket_name
        #: ObjectID -> set of asyncio.Event of the gets waiting for its seal.
        self._waiters = {}
        #: Gets waiting for a seal right now.
        self._waiting = 0
        self._closed = None
        sock = watcher.get_notification_socket()
        sock.setblocking(False)
        self._watch_sock = sock
        self._watch_task = asyncio.get_running_loop().create_task(self._watch())

    # -- plumbing ----------------------------------------------------------------------------

    async def _run(self, fn, *args, **kwargs):
        """Runs a blocking call of the underlying client on this client's worker thread."""
        if self._closed is not None:
            raise _plasma_error(f"the client is closed ({self._closed})")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, functools.partial(fn, *args, **kwargs))

    async def _watch(self):
        """Wakes the gets waiting for each object whose seal is announced."""
        frames = _Frames(self._watch_sock)
        reason = "the store closed the connection"
        try:
            while True:
                body = await frames.next()
                if body is None:
                    break
                ids, data_sizes, _ = self._watcher.decode_notifications(body)
                for object_id, size in zip(ids, data_sizes):
                    if size < 0:
                        continue
                    for event in self._waiters.get(object_id, ()):
                        event.set()
        except asyncio.CancelledError:
            reason = "close() was called"
            raise
        except Exception as e:  # noqa: BLE001 - any failure ends the watch, said below
            reason = f"the notification stream failed: {e}"
        finally:
            if self._closed is None:
                self._closed = reason
            # Wake every waiter: each sees the client closed.
            for events in self._waiters.values():
                for event in events:
                    event.set()

    async def _wait_fetch(self, object_ids, timeout_ms, fetch, missing):
        """Fetches ``object_ids`` with ``fetch(ids)`` (a timeout-0 call of the blocking
        client returning one entry per id) until none is ``missing(entry)`` or the timeout
        (ms; -1 none) has passed."""
        loop = asyncio.get_running_loop()
        ids = [i if isinstance(i, ObjectID) else ObjectID(i) for i in object_ids]
        deadline = None if timeout_ms is None or timeout_ms < 0 else \
            loop.time() + timeout_ms / 1000
        results = [None] * len(ids)
        pending = list(range(len(ids)))
        event = asyncio.Event()
        while True:
            wanted = list(dict.fromkeys(ids[i] for i in pending))
            # Registered before asking, so that a seal between the answer and the wait
            # still wakes this get.
            for object_id in wanted:
                self._waiters.setdefault(object_id, set()).add(event)
            try:
                event.clear()
                found = dict(zip(wanted, await self._run(fetch, wanted)))
                for i in pending:
                    results[i] = found[ids[i]]
                pending = [i for i in pending if missing(results[i])]
                if not pending:
                    return results
                left = None if deadline is None else deadline - loop.time()
                if left is not None and left <= 0:
                    return results
                self._waiting += 1
                try:
                    await asyncio.wait_for(event.wait(), left)
                except asyncio.TimeoutError:
                    return results
                finally:
                    self._waiting -= 1
                if self._closed is not None:
                    raise _plasma_error(f"the client is closed ({self._closed})")
            finally:
                for object_id in wanted:
                    events = self._waiters.get(object_id)
                    if events is not None:
                        events.discard(event)
                        if not events:
                            del self._waiters[object_id]

    # -- the client's calls ------------------------------------------------------------------

    @property
    def store_socket_name(self):
        """The socket path this client connected to."""
        return self._socket_name

    @property
    def waiting_gets(self):
        """How many gets are waiting for seals right now (for tests and monitoring)."""
        return self._waiting

    def store_capacity(self):
        """The store's capacity in bytes (known since connecting; not a coroutine)."""
        return self._client.store_capacity()

    async def create(self, object_id, data_size, metadata=None):
        """Creates an object; returns its writable data buffer (see ``PlasmaClient.create``)."""
        return await self._run(self._client.create, object_id, data_size, metadata)

    async def seal(self, object_id):
        """Seals an object this client created."""
        return await self._run(self._client.seal, object_id)

    async def create_and_seal(self, object_id, data, metadata=None):
        """Creates and seals an object holding ``data`` in one message."""
        return await self._run(self._client.create_and_seal, object_id, data, metadata)

    async def put_raw_buffer(self, value, object_id=None, metadata=None, memcopy_threads=6):
        """Stores the bytes of ``value`` as a new sealed object; returns its ObjectID."""
        return await self._run(self._client.put_raw_buffer, value, object_id, metadata,
                               memcopy_threads)

    async def put(self, value, object_id=None, memcopy_threads=6):
        """Stores a Python value (pickled, see ``PlasmaClient.put``); returns its ObjectID."""
        return await self._run(self._client.put, value, object_id, memcopy_threads)

    async def get_buffers(self, object_ids, timeout_ms=-1, with_meta=False):
        """Data buffers of objects, waiting up to ``timeout_ms`` (-1: until all are sealed);
        ``None`` (or ``(None, None)`` with ``with_meta``) for objects not available."""
        def fetch(ids):
            return self._client.get_buffers(ids, 0, with_meta)

        def missing(entry):
            return entry is None or (with_meta and entry[1] is None)
        results = await self._wait_fetch(object_ids, timeout_ms, fetch, missing)
        if with_meta:
            return [(None, None) if r is None else r for r in results]
        return results

    async def get_metadata(self, object_ids, timeout_ms=-1):
        """Metadata buffers of objects, waiting like :meth:`get_buffers`."""
        def fetch(ids):
            return self._client.get_metadata(ids, 0)
        return await self._wait_fetch(object_ids, timeout_ms, fetch, lambda e: e is None)

    async def get(self, object_ids, timeout_ms=-1):
        """Python values stored with ``put``, waiting like :meth:`get_buffers`: a list for a
        list of ids (``ObjectNotAvailable`` for those not available), a single value for a
        single ObjectID."""
        single = isinstance(object_ids, ObjectID)
        ids = [object_ids] if single else list(object_ids)

        def fetch(ids):
            return self._client.get(ids, 0)
        results = await self._wait_fetch(
            ids, timeout_ms, fetch, lambda e: e is ObjectNotAvailable)
        return results[0] if single else results

    async def contains(self, object_id):
        """Whether the store holds this object, sealed."""
        return await self._run(self._client.contains, object_id)

    async def hash(self, object_id):
        """The object's 8-byte digest."""
        return await self._run(self._client.hash, object_id)

    async def delete(self, object_ids):
        """Deletes objects (those in use go when released)."""
        return await self._run(self._client.delete, object_ids)

    async def list(self):
        """Every object in the store, as ``PlasmaClient.list``."""
        return await self._run(self._client.list)

    async def evict(self, num_bytes):
        """Evicts unused objects until ``num_bytes`` are freed; returns the bytes freed."""
        return await self._run(self._client.evict, num_bytes)

    async def set_client_options(self, client_name, limit_output_memory):
        """Names this client and gives it a memory quota."""
        return await self._run(self._client.set_client_options, client_name,
                               limit_output_memory)

    async def debug_string(self):
        """The store's report on its eviction policy."""
        return await self._run(self._client.debug_string)

    async def notifications(self):
        """``async for object_id, data_size, metadata_size in client.notifications()``: seals
        (sizes -1 for deletions and evictions), on a subscription of its own that ends with
        the iteration."""
        if self._closed is not None:
            raise _plasma_error(f"the client is closed ({self._closed})")
        loop = asyncio.get_running_loop()
        open_ = functools.partial(_plasma.connect, self._socket_name, num_retries=0)
        sub = await loop.run_in_executor(self._executor, open_)
        sock = None
        try:
            await loop.run_in_executor(self._executor, sub.subscribe)
            sock = sub.get_notification_socket()
            sock.setblocking(False)
            frames = _Frames(sock)
            while True:
                body = await frames.next()
                if body is None:
                    return
                ids, data_sizes, metadata_sizes = sub.decode_notifications(body)
                for item in zip(ids, data_sizes, metadata_sizes):
                    yield item
        finally:
            if sock is not None:
                sock.close()
            sub.disconnect()

    async def close(self):
        """Disconnects: the store drops this client's references and aborts its unsealed
        objects. Waiting gets fail with PlasmaError."""
        if self._closed is None:
            self._closed = "close() was called"
        self._watch_task.cancel()
        try:
            await self._watch_task
        except asyncio.CancelledError:
            pass
        self._watch_sock.close()
        self._watcher.disconnect()
        self._client.disconnect()
        self._executor.shutdown(wait=False)

    disconnect = close

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    def __repr__(self):
        state = "closed" if self._closed is not None else "connected"
        return f"<plasma_store.aio.AsyncPlasmaClient {self._socket_name!r} {state}>"
