# Augmenting declarations for the compiled accelerator (docs/accelerator.md): the classes below
# become extension types whose attributes are slots of the object (plain Python objects, the
# same values as in the .py); ``__dict__`` keeps any other attribute working as before.

cdef class ChangesetApplier:
    cdef dict __dict__
    cdef public object _last_parent, _last_parent_path, _take, _times_of, _times_val, dir_times
    cdef public object first_clamped, fs, layer_dirs, layer_files, ns, stats
