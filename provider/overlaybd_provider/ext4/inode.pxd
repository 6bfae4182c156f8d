# Augmenting declarations for the compiled accelerator (docs/accelerator.md): Inode becomes an
# extension type whose fields are slots of the object (plain Python objects, the same values as in
# the .py); ``__dict__`` keeps any other attribute working as before.

cdef class Inode:
    cdef dict __dict__
    cdef public object i_mode, i_uid, i_size_lo, i_atime, i_ctime, i_mtime, i_dtime, i_gid
    cdef public object i_links_count, i_blocks_lo, i_flags, l_i_version, i_block, i_generation
    cdef public object i_file_acl_lo, i_size_high, i_obso_faddr, l_i_blocks_high, l_i_file_acl_high
    cdef public object l_i_uid_high, l_i_gid_high, l_i_checksum_lo, l_i_reserved, i_extra_isize
    cdef public object i_checksum_hi, i_ctime_extra, i_mtime_extra, i_atime_extra, i_crtime
    cdef public object i_crtime_extra, i_version_hi, i_projid, ibody
