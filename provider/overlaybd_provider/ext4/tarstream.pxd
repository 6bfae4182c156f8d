# Augmenting declarations for the compiled accelerator (docs/accelerator.md): the classes below
# become extension types whose attributes are slots of the object (plain Python objects, the
# same values as in the .py); ``__dict__`` keeps any other attribute working as before.

cdef class TarReader:
    cdef dict __dict__
    cdef public object _base, _buf, _done, _eof, _first, _obd_end, _pos, _src, encoding, errors
    cdef public object fileobj, offset, pax_headers
