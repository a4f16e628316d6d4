"""Exceptions of plasma_store, named and rooted like pyarrow.plasma's.

They derive from ``pyarrow.ArrowException``, as the originals did, so code that catches
``pyarrow.lib.ArrowException`` keeps working. Connection and socket failures raise
``OSError`` (as pyarrow's IOError status did), invalid arguments ``ValueError``/``TypeError``.
"""

from pyarrow.lib import ArrowException

__all__ = [
    "PlasmaError",
    "PlasmaObjectExists",
    "PlasmaObjectNotFound",
    "PlasmaStoreFull",
]


class PlasmaError(ArrowException):
    """A request the store or the client refused (base of the other Plasma exceptions).

    Raised as such for refusals pyarrow reported as a generic ArrowException: sealing an
    object twice, a blocking get of an object this client created and has not sealed,
    a second subscription on one connection, a notification call before ``subscribe``.
    """


class PlasmaObjectExists(PlasmaError):
    """An object with this ObjectID already exists in the store."""


class PlasmaObjectNotFound(PlasmaError):
    """No such object (``hash`` of a missing object, ``seal`` of one this client did not
    create)."""


class PlasmaStoreFull(PlasmaError):
    """The store cannot make room for the object, even after evicting everything it may
    (or refused a client's memory quota)."""
