"""HTTP front door of the mesh: OpenAI-compatible REST, jobs over REST, WebSocket live captions."""
