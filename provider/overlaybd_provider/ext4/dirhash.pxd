# Augmenting declarations for the compiled accelerator (docs/accelerator.md): half-MD4 on C
# integers. Every step of the .py masks its result with 0xFFFFFFFF, and a sum, xor, and/or or
# shift of unsigned ints modulo 2**32, then masked, is the same number as Python's exact result
# masked, so the hashes are identical. The compiled dirhash_many hashes names one by one through
# _half_md4_one (the SWAR lanes of the pure-Python build are words these rounds refuse).

cimport cython

@cython.locals(x0=cython.uint, x1=cython.uint, x2=cython.uint, x3=cython.uint,
               x4=cython.uint, x5=cython.uint, x6=cython.uint, x7=cython.uint)
cpdef tuple _md4_rounds(unsigned int a, unsigned int b, unsigned int c, unsigned int d, object xs,
                        unsigned int M, unsigned int K2, unsigned int K3)

@cython.locals(m=cython.uint, data=bytes, length=cython.Py_ssize_t, start=cython.Py_ssize_t, n=cython.Py_ssize_t,
               p=cython.uint, pad=cython.uint, a=cython.uint, b=cython.uint, c=cython.uint, d=cython.uint)
cpdef tuple _half_md4_one(object name, unsigned int s0, unsigned int s1, unsigned int s2, unsigned int s3,
                          bint unsigned_chars)

@cython.locals(m=cython.uint, val=cython.uint, end=cython.Py_ssize_t, c=cython.int)
cdef unsigned int _word(bytes data, Py_ssize_t start, Py_ssize_t k, Py_ssize_t n, unsigned int pad,
                        bint unsigned_chars)
