"""Image documents: converted configs, manifests and indexes, byte-exact like upstream's Go output."""
