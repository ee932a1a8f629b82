from magcache_dist.sampling.loop import SamplerConfig, SampleResult, model_call, sample
from magcache_dist.sampling.schedulers import FlowScheduler

__all__ = ["SamplerConfig", "SampleResult", "model_call", "sample", "FlowScheduler"]
