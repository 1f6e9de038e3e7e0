"""Benchmarks: prefopt vs TRL (run with `prefopt bench dpo|rm|grpo`)."""
