"""``python -m wattless.bench --worker SPEC.json``: the worker process bench spawns for each runtime."""

import sys

from wattless.bench.process import main

if __name__ == "__main__":
    main(sys.argv[1:])
