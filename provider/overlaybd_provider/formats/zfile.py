"""ZFile: seekable block-compressed container (zfile.md).

:class:`ZFileWriter` streams any amount of input in bounded memory and emits exactly the
layout of ``overlaybd-commit -z``; :class:`ZFileReader` gives random access with every CRC
verified and also opens legacy ZFiles. Records live in ``zfile_header``, block codecs in
``zfile_codec``.
"""

from __future__ import annotations

from overlaybd_provider.formats.zfile_header import ZFileHeader
from overlaybd_provider.formats.zfile_reader import ZFileReader
from overlaybd_provider.formats.zfile_writer import ZFileInfo, ZFileWriter

__all__ = ["ZFileHeader", "ZFileInfo", "ZFileReader", "ZFileWriter"]
