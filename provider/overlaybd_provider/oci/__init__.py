"""OCI image I/O: references, media types, registry client, OCI image layouts.

Knows HTTP and files, nothing about overlaybd formats. Entry point for callers:
:func:`overlaybd_provider.oci.store.open_store`.
"""
