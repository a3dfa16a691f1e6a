"""The LLM stage: prompts over receptive fields, an OpenAI-compatible client, its cache, the local server."""
