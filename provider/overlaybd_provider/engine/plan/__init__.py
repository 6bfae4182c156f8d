"""Planning: which manifests and layers a conversion has, their chain ids, what dedup reuses."""
