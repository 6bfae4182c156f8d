# Augmenting declarations for the compiled accelerator (docs/accelerator.md): the classes below
# become extension types whose attributes are slots of the object (plain Python objects, the
# same values as in the .py); ``__dict__`` keeps any other attribute working as before.

cdef class OverlayBlockDevice:
    cdef dict __dict__
    cdef public object _clear_hi, _clear_lo, _discard, _fd, _full_checks, _next_slot, _pend, _pend_bytes, _pend_slot
    cdef public object _run_len, _run_slot, _run_start, _sbuf, _sbuf_slot, _shadowed, _single, _spool, _tgt_len
    cdef public object _tgt_off, _tgt_sect, _tgt_start, _zs, block_count, blocks_read_lower
    cdef public object compressor, lower, turbo
