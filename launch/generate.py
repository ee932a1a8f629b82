"""Generate a video: ``python launch/generate.py --config configs/default.yaml`` or under
``torchrun --nproc_per_node N launch/generate.py ...``; the same as the ``magcache-generate`` command
(magcache_dist/launcher/main.py, where the exit codes are described). Needs the package installed
(``pip install -e .``; ``.ci/setup.sh`` does it)."""
import sys

from magcache_dist.launcher.main import main

if __name__ == "__main__":
    sys.exit(main())
