"""python -m backend worker [KIND ...] [--fork] [--burst]: the same as `segagent-worker` (backend/worker.py), for
an image or a checkout where the console script is not installed."""
import sys

from backend.worker import main

if len(sys.argv) < 2 or sys.argv[1] != "worker":
    sys.exit("usage: python -m backend worker [preannotate] [annotation] [train] [--fork] [--burst] [--url URL]")
sys.exit(main(sys.argv[2:]))
