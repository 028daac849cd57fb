"""Compose jobs on an external queue engine (Dramatiq on Redis), for several GPU machines.

``engine``: the broker, the queue settings read from the URL, the job book and ``RedisQueue``
(submit, status, list; a ``loraregistry.web.jobs.JobQueue`` for ``serve --queue``).
``worker``: ``QueueWorker``, the long-lived process that runs jobs on one warm pipeline.
"""
from loraregistry.queue.engine import JobFailed, QueueSettings, RedisQueue

__all__ = ["JobFailed", "QueueSettings", "RedisQueue"]
