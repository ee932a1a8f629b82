"""What every kind of test shares: job overrides for tiny checkpoints (helpers; the checkpoints themselves come
from magcache_dist.random_weights), the tiny model families (families), tiny Wan2.1 components (wan_tiny), the
bad-input catalogue (bad_inputs), the process launcher of the distributed tests (dist_worker) and the
fault-injecting entry point (fault_entry)."""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout
