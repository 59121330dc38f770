"""The WSGI module's garbage-collector set-up (config/wsgi.py, decision 027), checked in a fresh interpreter:
every web worker imports it once, and a test process has imported and collected too much to tell."""

import json
import os
import subprocess
import sys

PROBE = """
import gc, json
import config.wsgi
# a cycle made after start-up is still collected: freezing the loaded app must not stop collection
class Node:
    pass
a, b = Node(), Node()
a.other, b.other = b, a
import weakref
ref = weakref.ref(a)
del a, b
gc.collect()
print(json.dumps({"threshold": gc.get_threshold(), "frozen": gc.get_freeze_count(), "cycle_freed": ref() is None}))
"""


def test_the_loaded_app_is_frozen_out_of_collections_and_later_cycles_are_still_freed():
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True, timeout=120
    ).stdout
    found = json.loads(out.strip().splitlines()[-1])
    assert found["threshold"][0] == 10_000
    # Django, DRF, the URLconf and every view: tens of thousands of objects no collection scans again.
    assert found["frozen"] > 50_000
    assert found["cycle_freed"] is True
