"""Rollout: generation engines (vLLM, HF) and, on top of them, the multi-turn agent loop."""

from workers.rollout.engines import Generation, GenerationEngine, SamplingSettings, make_engine

__all__ = ["Generation", "GenerationEngine", "SamplingSettings", "make_engine"]
