"""A worker freezes what it built at start-up so full collections do not walk it again."""

from __future__ import annotations

import gc

from cds_service.worker_gc import freeze_startup_objects


def test_objects_alive_at_start_up_are_moved_out_of_the_collected_generations():
    long_lived = [{"card": n} for n in range(100)]
    gc.unfreeze()
    try:
        before = gc.get_freeze_count()
        freeze_startup_objects()
        assert gc.get_freeze_count() > before
        collected = {id(o) for generation in range(3) for o in gc.get_objects(generation)}
        assert id(long_lived) not in collected
    finally:
        gc.unfreeze()
    assert id(long_lived) in {id(o) for o in gc.get_objects()}


def test_objects_made_after_the_freeze_are_still_collected():
    gc.unfreeze()
    try:
        freeze_startup_objects()
        per_request = [[n] for n in range(10)]
        assert id(per_request) in {id(o) for generation in range(3) for o in gc.get_objects(generation)}
    finally:
        gc.unfreeze()
