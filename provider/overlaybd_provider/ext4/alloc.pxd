# Augmenting declarations for the compiled accelerator (docs/accelerator.md): the classes below
# become extension types whose attributes are slots of the object (plain Python objects, the
# same values as in the .py); ``__dict__`` keeps any other attribute working as before.

cdef class Allocator:
    cdef dict __dict__
    cdef public object _block_cursor, _bpend, _brun_end, _freed_blocks, _freed_inodes
    cdef public object _inode_cursor, _ipend, _irun_end, bbm, context, geo, groups, ibm, sb
