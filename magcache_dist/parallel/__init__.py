from magcache_dist.parallel.apply import apply_sequence_parallel, check_backend
from magcache_dist.parallel.consensus import SkipConsensus, SkipDisagreement
from magcache_dist.parallel.dims import (
                                         ParallelContext,
                                         ParallelDims,
                                         build_dist_context,
                                         build_thread_contexts,
                                         solo_context,
)
from magcache_dist.parallel.shard import Sharder

__all__ = ["apply_sequence_parallel", "check_backend", "SkipConsensus", "SkipDisagreement", "ParallelContext",
           "ParallelDims", "build_dist_context", "build_thread_contexts", "solo_context", "Sharder"]
