"""The embedded serving tier: one base model, LoRA adapters, vLLM's and OpenAI's HTTP API."""
