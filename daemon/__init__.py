"""cued's engine: configuration, pure scheduling core, durable store, runner and CLI."""
