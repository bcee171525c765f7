"""The runtime: the engine that applies state changes, executors and step invocation."""
