"""Property tests (a package, so that its helper modules import as `property.*`)."""
