# Augmenting declarations for the compiled accelerator (docs/accelerator.md): the classes below
# become extension types whose attributes are slots of the object (plain Python objects, the
# same values as in the .py); ``__dict__`` keeps any other attribute working as before.

cdef class Filesystem:
    cdef dict __dict__
    cdef public object _gdt_orig, _meta, _meta_dirty, alloc, bbm, dev, fresh, geo, groups
    cdef public object hash_seed, hash_version, ibm, sb, signed_hash
