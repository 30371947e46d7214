"""Training of the three ZipMo stages on LIBERO demos: trajectory VAE, motion planner, policy head (BC).

`trainer.train(cfg)` runs one stage from a composed `configs/train/<stage>.yaml`; `stages.py` holds the
per-stage models and losses, `data.py` the deterministic global-batch sampler over preprocessed demos,
`plan_cache.py` the cache of planner samples for behavioural cloning, `config.py` the config schema.
"""
