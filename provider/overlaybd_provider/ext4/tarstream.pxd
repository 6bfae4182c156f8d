# Augmenting declarations for the compiled accelerator (docs/accelerator.md): the classes below
# become extension types whose attributes are slots of the object (plain Python objects, the
# same values as in the .py); ``__dict__`` keeps any other attribute working as before.

cimport cython

cdef class TarReader:
    cdef dict __dict__
    cdef public object _base, _buf, _done, _eof, _first, _obd_end, _pos, _src, encoding, errors
    cdef public object fileobj, offset, pax_headers

# C loops for the header's byte sum and its octal numbers (tarstream.py, "The three helpers"):
# the callers pass 512-byte ``bytes`` only, so the sum stays below 2**17 and an 11-digit octal
# field below 2**33; an index outside the header raises IndexError (bounds are checked).

@cython.locals(total=cython.long, i=cython.Py_ssize_t)
cpdef long _unsigned_sum(bytes h)

@cython.locals(k=cython.int)
cpdef bint _checksum_written(bytes h, long computed)

@cython.locals(value=cython.longlong, i=cython.Py_ssize_t, c=cython.int)
cpdef long long _octal_field(bytes h, Py_ssize_t start, Py_ssize_t end)
