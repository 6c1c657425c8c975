"""Generic plumbing that the hub, the agent and the command line share.

Nothing here knows about edgecollab's protocol or orchestration; each module
does one job:

- ``mqtt``: a reconnecting MQTT session (aiomqtt) with backoff and subscriptions;
- ``sqlite``: one SQLite file served by one worker thread, with transactions;
- ``http``: a small synchronous JSON-over-HTTP client for one-shot commands;
- ``processes``: child processes an asyncio program starts, never left running;
- ``table``: plain-text tables for command-line output.
"""
