"""`cds-service demo`: the service with bundled demo patients, called as an EHR would."""
