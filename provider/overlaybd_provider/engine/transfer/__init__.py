"""Moving bytes: endpoints (registry or OCI layout), the local blob cache, the scratch workspace,
layer fetch/build and publishing."""
