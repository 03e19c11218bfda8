"""Ray-free logic: data, rollout, reward, learner. Importable and testable without Ray."""
