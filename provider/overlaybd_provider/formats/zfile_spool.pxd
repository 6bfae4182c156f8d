# Augmenting declarations for the compiled accelerator (docs/accelerator.md): the classes below
# become extension types whose attributes are slots of the object (plain Python objects, the
# same values as in the .py); ``__dict__`` keeps any other attribute working as before.

cdef class CompressedSpool:
    cdef dict __dict__
    cdef public object _ack_r, _appended, _auto, _done, _file, _inflight, _job_first, _job_w
    cdef public object _open_len, _open_off, _pid, _proc, _recorded, _region_end, _ring, block_size
    cdef public object blocks, compressor, fd, lengths, offsets
