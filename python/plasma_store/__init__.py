"""plasma_store: a client for the Plasma shared-memory object store.

The API is that of ``pyarrow.plasma`` (removed from pyarrow in version 12), for today's
pyarrow, numpy and Python. Code written for pyarrow.plasma ports by changing its import::

    import plasma_store as plasma      # was: import pyarrow.plasma as plasma

The import name is ``plasma_store``, not ``plasma`` or ``pyarrow.plasma``, so that it can
never shadow or be shadowed by pyarrow's old module: both clients can even be installed in
one environment (pyarrow <= 11 with this package) while code moves over.

It talks the original wire protocol, so it works with this project's daemon
(``plasma_store -m BYTES -s SOCKET``) and with Arrow's ``plasma-store-server``, and shares
objects with pyarrow.plasma clients. Buffers are zero-copy ``pyarrow.Buffer`` objects over the
shared memory; each keeps its object referenced until it is garbage collected.

Differences from pyarrow.plasma are listed in the README; the main one: ``put``/``get``
pickle values (protocol 5, large buffers out-of-band and zero-copy) because pyarrow's own
serialization no longer exists.
"""

import pyarrow as _pa

from ._plasma import (  # noqa: F401
    ObjectID,
    ObjectNotAvailable,
    PlasmaClient,
    PlasmaMemory,
    __version__,
    connect,
)
from ._store import find_plasma_store_binary, start_plasma_store  # noqa: F401
from .exceptions import (  # noqa: F401
    PlasmaError,
    PlasmaObjectExists,
    PlasmaObjectNotFound,
    PlasmaStoreFull,
)

#: Buffers this package returns are plain ``pyarrow.Buffer`` objects (pyarrow.plasma had a
#: subclass, PlasmaBuffer); the alias keeps ``isinstance(x, plasma.PlasmaBuffer)`` working.
PlasmaBuffer = _pa.Buffer

__all__ = [
    "ObjectID",
    "ObjectNotAvailable",
    "PlasmaBuffer",
    "PlasmaClient",
    "PlasmaError",
    "PlasmaMemory",
    "PlasmaObjectExists",
    "PlasmaObjectNotFound",
    "PlasmaStoreFull",
    "connect",
    "find_plasma_store_binary",
    "start_plasma_store",
]
