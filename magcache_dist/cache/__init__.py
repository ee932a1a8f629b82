from magcache_dist.cache.base import CachePolicy, CacheState, Decision, NoCache
from magcache_dist.cache.magcache import MagCacheConfig, MagCachePolicy, build_magcache, skip_schedule
from magcache_dist.cache.presets import get_preset, preset_names
from magcache_dist.cache.ratios import RatioTable, nearest_interp

__all__ = ["CachePolicy", "CacheState", "Decision", "NoCache", "MagCacheConfig", "MagCachePolicy",
           "build_magcache", "skip_schedule", "get_preset", "preset_names", "RatioTable", "nearest_interp"]
