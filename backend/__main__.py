"""python -m backend worker [KIND ...] [--fork] [--burst]: the same as `segagent-worker` (backend/worker.py), for
an image or a checkout where the console script is not installed; python -m backend migrate: a data folder's
SQLite stores copied into PostgreSQL (backend/migrate.py)."""
import sys

USAGE = ("usage: python -m backend worker [preannotate] [annotation] [train] [--fork] [--burst] [--url URL]\n"
         "       python -m backend migrate [--data-dir D] [--database-url URL]")

if len(sys.argv) < 2 or sys.argv[1] not in ("worker", "migrate"):
    sys.exit(USAGE)
if sys.argv[1] == "worker":
    from backend.worker import main
else:
    from backend.migrate import main
sys.exit(main(sys.argv[2:]))
