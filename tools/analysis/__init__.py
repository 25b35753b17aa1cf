"""Analysis tools: pictures of what trained models attend to."""
