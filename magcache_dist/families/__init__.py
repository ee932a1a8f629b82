"""Model families beyond the embedded tiny models; each module registers itself with pipeline.register_family."""
