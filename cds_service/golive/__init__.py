"""Tools a hospital runs before go-live: `cds-service selftest` (plays the EHR against a
running service) and `cds-service coverage` (the site's local codes the concepts miss)."""
