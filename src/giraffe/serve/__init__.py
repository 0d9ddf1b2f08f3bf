"""The HTTP server: an OpenAI-compatible API and the web page, over continuous batching."""
