"""What every kind of test shares: tiny checkpoints and job overrides (helpers), the tiny model families
(families), tiny Wan2.1 components (wan_tiny), the bad-input catalogue (bad_inputs), the process launcher of the
distributed tests (dist_worker) and the fault-injecting entry point (fault_entry)."""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout
