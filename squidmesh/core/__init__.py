"""The pure core: definitions, commands, payload contracts, retry, history and replay.

Nothing here touches a database, a clock, threads or the environment; time comes in as
an argument and everything that goes out is plain JSON-ready data.
"""
