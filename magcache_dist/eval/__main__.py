"""``python -m magcache_dist.eval``: see magcache_dist/eval/cli.py."""
import sys

from magcache_dist.eval.cli import main

if __name__ == "__main__":
    sys.exit(main())
