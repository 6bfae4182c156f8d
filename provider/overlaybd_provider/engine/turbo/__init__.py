"""TurboOCIv1 output of the engine (docs/turbo-oci.md §7): plan keys, layer builds, documents and
the source layers a TurboOCI image reads from, made available in its destination."""

ARTIFACT_TYPE = "application/vnd.containerd.overlaybd.turbo.v1+json"
