"""overlaybd container formats, bytes only: ZFile (``zfile``), LSMT layers and stacks
(``lsmt``), the layer-blob tar wrapper and nesting probe (``blob``), raw export (``export``).
Specs: ``shared/spec/zfile.md``, ``lsmt.md``, ``layer-blob.md``."""
